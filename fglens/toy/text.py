"""The toy pipeline's prompt encoding during training: cached when the text encoder is frozen, differentiable when
it trains with the DiT.

Both give what sampling gives the DiT — Wan's ``encode_prompt``: the UMT5 states of the real tokens, zeros after
them up to 512 — so a model trained on them sees at sampling what it saw in training (to float32 rounding: a row's
last bits may depend on the batch it is computed in, < 1e-5). The differentiable one
runs UMT5 on the batch's longest prompt with the attention mask instead of on 512 tokens: with the pads masked
the real tokens' states do not depend on them (`tests/test_toy_train.py` checks it against ``encode_prompt``).

Why a trainable encoder exists: up to the third version the shipped UMT5 kept its seeded random weights, a fixed
feature map that hardly tells a word's role — the state of "green" as the subject of "the green circle moves to the
white triangle" and as its object has cosine 0.987 — so the DiT, whose text keys carry no position, sees nearly a
bag of words, and "A moves to B" reads as "B moves to A". The fifth version trains it with the DiT; measured, the
roles stayed as close (cosines 0.98-0.99) and the version's gain came from the extra steps; at ten times the rate
they separate (0.64-0.82) and following still does not move (docs/toy-world.md, the sixth training).

Example:
    >>> import fglens as fg
    >>> pipe = fg.toy.pipeline("base")
    >>> emb = TextEncoding(pipe)(["the red circle moves left", ""])
    >>> tuple(emb.shape), float(emb[0, 6:].abs().sum()), emb.requires_grad
    ((2, 512, 32), 0.0, False)
"""

from __future__ import annotations

import torch

MAX_TOKENS = 512  #: Wan's text length: real tokens, then zeros


class TextEncoding:
    """Prompts -> the text states the DiT reads ([B, 512, d]); with `train`, gradients reach the text encoder."""

    def __init__(self, pipe, *, train: bool = False):
        self.pipe, self.train, self.cache = pipe, train, {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        if self.train:
            return self._encode(prompts)
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            with torch.no_grad():
                emb, _ = self.pipe.encode_prompt(missing, do_classifier_free_guidance=False,
                                                 max_sequence_length=MAX_TOKENS, device=self.pipe.text_encoder.device)
            self.cache.update(zip(missing, emb, strict=False))
        return torch.stack([self.cache[p] for p in prompts])

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

        tokens = self.pipe.tokenizer([prompt_clean(p) for p in prompts], padding="longest", max_length=MAX_TOKENS,
                                     truncation=True, add_special_tokens=True, return_attention_mask=True,
                                     return_tensors="pt").to(self.pipe.text_encoder.device)
        states = self.pipe.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
        states = states * tokens.attention_mask[..., None].to(states.dtype)  # Wan's zeros after the real tokens
        return torch.nn.functional.pad(states, (0, 0, 0, MAX_TOKENS - states.shape[1]))
