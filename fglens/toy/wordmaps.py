"""A training loss that teaches the DiT's word maps to land on the objects the words name.

In every block's cross-attention each video token spreads one unit of probability over the 512 text keys; a
word's map is the head-mean probability of the word's tokens per video token (what ``fg.Record(maps=True)``
records). Normalised over the video tokens, the map is a distribution over the clip; its **expected coverage**
is the mean, under that distribution, of how much of each token's pixel cell the named object covers in the
frames the token's latent frame encodes. The loss is ``-log`` of it, averaged over blocks and named objects:
0 when a word attends only to cells the object fills, ``-log`` of the object's share of the clip when it
attends evenly. That is kind ``map``; it constrains the map's shape, not how much attention the word gets, and
a DiT taught so can move its background tokens' attention off the word altogether. Kind ``token`` reads the
other axis: the cover-weighted mean, over the object's video tokens, of the share of their text attention that
goes to the word, ``-log`` of it: an object's tokens taught to read their word; alone it lets the DiT raise
every token's attention to the word, the background's as much as the object's (measured: a flat map). Kind
``both`` takes the mean of the two terms: a word read by its object's tokens and by no other.

Why it exists: the recipes that made the toy follow more (docs/toy-world.md, the seventh and eighth trainings)
blurred its word maps, the thing fglens reads; this term keeps them on the objects while the DiT trains on. A
model trained with it has word maps that are *taught*, as InterpBench's models have taught circuits: the
mechanism is planted and known, not discovered.

Example:
    >>> import fglens as fg
    >>> from fglens.toy.train import _items, _rng
    >>> pipe = fg.toy.pipeline("base")
    >>> pairs = _items(_rng(0, "pool", 0), 4)
    >>> targets = pool_targets(pipe, pairs)
    >>> [len(t) for t in targets]                      # named objects per item (0: a camera instruction)
    [2, 2, 1, 1]
    >>> targets[0][0].positions, tuple(targets[0][0].cover.shape)   # "yellow triangle": tokens 1, 2
    ((1, 2), (5, 8, 8))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 8  #: pixels per video token's side (the VAE's 4× and the DiT's 2×2 patches)


@dataclass(frozen=True)
class Target:
    """One named object of one pool item: its tokens among the text keys and its coverage of each video token's
    cell ([latent frames × 8 × 8] floats in [0, 1], in the DiT's token order)."""

    positions: tuple[int, ...]
    cover: torch.Tensor


def token_cover(coverage: np.ndarray) -> torch.Tensor:
    """Per-frame pixel coverage [frames, H, W] -> per video token [1 + (frames - 1) / 2, H / 8, W / 8]: the first
    latent frame is frame 0, each later one the mean of the two frames it encodes.

    Example:
        >>> c = np.zeros((9, 64, 64)); c[:, :8, :16] = 1.0
        >>> t = token_cover(c); tuple(t.shape), float(t[0, 0, :3].sum())
        ((5, 8, 8), 2.0)
    """
    cover = torch.from_numpy(np.asarray(coverage, dtype=np.float32))
    first, rest = cover[:1], cover[1:]
    rest = rest.reshape(rest.shape[0] // 2, 2, *rest.shape[1:]).mean(1)
    return F.avg_pool2d(torch.cat([first, rest])[:, None], PATCH)[:, 0]


def pool_targets(pipe, pairs) -> list[list[Target]]:
    """The named objects of each (scene, instruction) pair, with their tokens as the pipeline's tokenizer cuts
    the prompt and their coverage per video token; an object that covers less than half a cell in all is left
    out (nothing to land on)."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

    from ..adapters.prompt import PromptTokens
    from .world import coverage, prompt

    out = []
    for scene, ins in pairs:
        text = prompt_clean(prompt(scene, ins))
        ids = pipe.tokenizer(text, add_special_tokens=True).input_ids
        tokens = PromptTokens(text, pipe.tokenizer.convert_ids_to_tokens(ids), len(ids))
        named = [i for i in (ins.target, ins.other) if i is not None]
        cover = coverage(scene, ins)  # frames, objects, H, W
        item = []
        for i in named:
            c = token_cover(cover[:, i])
            if float(c.sum()) >= 0.5:
                item.append(Target(tuple(tokens.locate([scene.objects[i].name])[scene.objects[i].name]), c))
        out.append(item)
    return out


def text_probs(attn, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The head-mean probability each video token gives each text key in a Wan cross-attention `attn`, [B, N, 512],
    differentiable; `hidden` and `context` are what the block passes the attention (its I2V context holds the
    image tokens, then the 512 text keys)."""
    text = context[:, -512:]
    q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))  # B N H d
    k = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1))  # B T H d
    return torch.einsum("bnhd,bthd->bhnt", q, k).mul(q.shape[-1] ** -0.5).softmax(-1).mean(1)


def expected_coverage(word: torch.Tensor, cover: torch.Tensor, kind: str = "map") -> torch.Tensor:
    """The quantity whose ``-log`` is the loss, from a word's text-attention probability per video token and the
    object's coverage of each token's cell (both [N]). ``map``: the word's map normalised over the tokens, its mean
    coverage; ``token``: the coverage-weighted mean of the word's probability over the object's tokens.

    Example:
        >>> word, cover = torch.tensor([0.2, 0.0, 0.1, 0.1]), torch.tensor([1.0, 0.0, 0.5, 0.0])
        >>> [round(float(expected_coverage(word, cover, kind)), 4) for kind in ("map", "token")]
        [0.625, 0.1667]
    """
    if kind == "map":  # where the word looks: its map over the clip, on the object
        return (word / word.sum().clamp_min(1e-12) * cover).sum()
    return (word * cover).sum() / cover.sum()  # what the object looks at: its tokens' attention on the word


#: the forms of the loss: ``map`` normalises each word's map over the clip (its shape alone), ``token`` reads
#: each object token's text attention (how much of it goes to the word), ``both`` is the mean of the two terms
KINDS = ("map", "token", "both")


class WordMapLoss:
    """Forward pre-hooks on every block's cross-attention that add up the word-map loss of a batch.

    Set `batch` to the targets of each row before the DiT's forward (an empty list for a row without a prompt),
    read `value()` after it (the mean over blocks and targets, 0 when the batch names nothing), and `remove()` the
    hooks at the end. `blocks` names the blocks taught (default: all); a planting leaves its planted blocks out,
    since they are shown the empty prompt. `kind` is one of `KINDS`.
    """

    def __init__(self, transformer, blocks: tuple[int, ...] | None = None, kind: str = "map"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        self.kind = kind
        n = len(transformer.blocks)
        blocks = tuple(range(n)) if blocks is None else tuple(blocks)
        if not blocks or not all(0 <= i < n for i in blocks):
            raise ValueError(f"blocks must name some of the DiT's blocks 0..{n - 1}; got {blocks!r}")
        self.batch: list[list[Target]] = []
        self.terms: list[torch.Tensor] = []
        self.handles = [transformer.blocks[i].attn2.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for i in blocks]

    def _hook(self, attn, args, kwargs):
        if not any(self.batch):
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
        probs = text_probs(attn, hidden, context)  # B N T
        for row, targets in enumerate(self.batch):
            for t in targets:
                word = probs[row][:, list(t.positions)].sum(-1)  # N
                cover = t.cover.flatten().to(word)
                for kind in (("map", "token") if self.kind == "both" else (self.kind,)):
                    self.terms.append(-torch.log(expected_coverage(word, cover, kind).clamp_min(1e-6)))
        return None

    def value(self) -> torch.Tensor:
        """The batch's loss (mean over blocks and targets); clears the terms for the next batch."""
        terms, self.terms = self.terms, []
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
