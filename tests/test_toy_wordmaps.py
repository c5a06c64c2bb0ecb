"""The word-map loss (`fglens.toy.wordmaps`): what it reads is what fglens records, it measures focus, and a run
trained with it records the term and resumes exactly."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from fglens.toy.train import TrainConfig, _items, _rng, encode_pool, train
from fglens.toy.wordmaps import KINDS, WordMapLoss, pool_targets, text_probs, token_cover
from fglens.toy.world import prompt

SMOKE = dict(vae_steps=3, vae_batch=1, pool=4, dit_steps=4, dit_batch=2, checkpoint_every=2, warmup=1)


@pytest.fixture(scope="module")
def base():
    import fglens as fg

    return fg.toy.pipeline("base")


def test_text_probs_give_the_word_maps_fglens_records(base):
    """The loss's probabilities, from the block's own inputs, against the tracer's word maps (which the trace
    tests hold to float64 dense attention), every block, one denoising step without CFG."""
    import fglens as fg

    item = next(i for i in fg.toy.suite("test", n=8, seed=0) if i.words[0] in i.masks())
    word = item.words[0]
    inputs = {}

    def keep(i):
        return lambda attn, args: inputs.__setitem__(i, (args[0].detach(), args[1].detach()))

    handles = [b.attn2.register_forward_pre_hook(keep(i)) for i, b in enumerate(base.transformer.blocks)]
    try:
        with fg.trace(base, record=fg.Record(words=[word], maps=True)) as run:
            base(image=item.image, prompt=item.prompt, generator=torch.Generator().manual_seed(0),
                 **{**fg.toy.CALL, "num_inference_steps": 1, "guidance_scale": 1.0})
    finally:
        for h in handles:
            h.remove()
    recorded = run.dataset["word_map"].sel(branch="cond", word=word).isel(step=0)  # layer, frame, y, x
    positions = pool_targets(base, [(item.scene, item.instruction)])[0][0].positions
    assert len(inputs) == len(base.transformer.blocks) == recorded.sizes["layer"]
    for i, (hidden, context) in inputs.items():
        with torch.no_grad():
            mine = text_probs(base.transformer.blocks[i].attn2, hidden, context)[0][:, list(positions)].sum(-1)
        np.testing.assert_allclose(mine.reshape(recorded.shape[1:]).numpy(), recorded.isel(layer=i).values,
                                   rtol=1e-4, atol=1e-6)


def test_token_cover_is_the_objects_share_of_each_tokens_cell_per_latent_frame():
    c = np.zeros((9, 64, 64))
    c[0, :8, :8] = 1.0  # frame 0: one whole cell
    c[1, 8:16, :8] = 1.0  # frame 1 alone (latent frame 1 is frames 1 and 2): half a cell on average
    c[3:5, :4, :8] = 1.0  # frames 3 and 4 (latent frame 2): half of cell (0, 0)
    t = token_cover(c)
    assert t.shape == (5, 8, 8)
    assert float(t[0, 0, 0]) == 1.0 and float(t[0].sum()) == 1.0
    assert float(t[1, 1, 0]) == 0.5 and float(t[1].sum()) == 0.5
    assert float(t[2, 0, 0]) == 0.5 and float(t[3:].sum()) == 0.0


def test_pool_targets_name_each_objects_tokens_and_nothing_for_instructions_that_name_none(base):
    pairs = _items(_rng(0, "pool", 0), 40)
    targets = pool_targets(base, pairs)
    tokens = [base.tokenizer.convert_ids_to_tokens(base.tokenizer(prompt(s, i)).input_ids) for s, i in pairs]
    for (scene, ins), item, toks in zip(pairs, targets, tokens, strict=True):
        named = [scene.objects[i].name for i in (ins.target, ins.other) if i is not None]
        if not named:  # camera motion, or a scene that stays still as a whole
            assert item == []
            continue
        assert 1 <= len(item) <= len(named)
        for t in item:
            assert "".join(toks[p] for p in t.positions).replace("▁", " ").strip() in named
            assert t.cover.shape == (5, 8, 8) and float(t.cover.sum()) >= 0.5 and float(t.cover.max()) <= 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_the_loss_is_lower_for_the_trained_base_than_for_an_untrained_dit(base, kind):
    """The trained base's words attend to their objects (docs/toy-world.md, the word-map test); an untrained DiT
    of the same size, reading the same text states, does not: the loss tells them apart on one batch."""
    from fglens.toy.model import SHIFT
    from fglens.toy.report import untrained_control
    from fglens.toy.text import TextEncoding

    cfg = TrainConfig(pool=12)
    pool = encode_pool(cfg, base, progress=False)
    targets = pool_targets(base, _items(_rng(0, "pool", 0), 12))
    z0 = pool["z0"].float()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    s = SHIFT * 0.5 / (1 + (SHIFT - 1) * 0.5)
    x = torch.cat([(1 - s) * z0 + s * noise, pool["cond"].float()], 1)
    values = {}
    for name, pipe in (("base", base), ("control", untrained_control(base))):
        loss = WordMapLoss(pipe.transformer, kind=kind)
        loss.batch = targets
        try:
            with torch.no_grad():
                pipe.transformer(x, timestep=torch.full((12,), s * 1000), return_dict=False,
                                 encoder_hidden_states=TextEncoding(pipe)(pool["prompts"]),
                                 encoder_hidden_states_image=pool["img"].float())
            values[name] = float(loss.value())
        finally:
            loss.remove()
        assert not any(b.attn2._forward_pre_hooks for b in pipe.transformer.blocks)
    assert values["base"] < values["control"] - 0.2, values


def _word_map_rows(path):
    with open(path / "loss.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["phase"] == "word_map"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_word_map_weighted_run_lowers_the_term_records_it_and_resumes_exactly(tmp_path, kind):
    cfg = dict(SMOKE, dit_word_map_weight=1.0, dit_word_map_kind=kind, dit_steps=12, checkpoint_every=6,
               dit_lr=2e-3, prompt_dropout=0.0)
    info = train(TrainConfig(**cfg), tmp_path / "a", progress=False)
    maps = _word_map_rows(tmp_path / "a")
    assert len(maps) == len(info["dit_loss"]) == 12 and all(np.isfinite(maps))
    assert np.mean(maps[-4:]) < np.mean(maps[:4]), maps
    train(TrainConfig(**{**cfg, "dit_steps": 6}), tmp_path / "b", progress=False)
    train(TrainConfig(**cfg), tmp_path / "b", progress=False)  # resumes at step 6
    assert _word_map_rows(tmp_path / "b") == maps
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / r / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
            for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_a_bad_word_map_weight_is_refused(bad):
    with pytest.raises(ValueError, match="dit_word_map_weight must be a finite number >= 0"):
        TrainConfig(dit_word_map_weight=bad)


def test_a_bad_word_map_kind_or_block_list_is_refused(base):
    with pytest.raises(ValueError, match="dit_word_map_kind must be 'map', 'token' or 'both'"):
        TrainConfig(dit_word_map_kind="tokens")
    with pytest.raises(ValueError, match="kind must be one of map, token, both; got 'maps'"):
        WordMapLoss(base.transformer, kind="maps")
    with pytest.raises(ValueError, match=r"blocks must name some of the DiT's blocks 0..7; got \(8,\)"):
        WordMapLoss(base.transformer, blocks=(8,))
    assert not any(b.attn2._forward_pre_hooks for b in base.transformer.blocks)


def test_a_planting_leaves_its_planted_blocks_out_of_the_term(monkeypatch, tmp_path):
    import fglens.toy.wordmaps as wordmaps

    made = []
    real = wordmaps.WordMapLoss
    monkeypatch.setattr(wordmaps, "WordMapLoss", lambda dit, blocks, kind: made.append((blocks, kind)) or
                        real(dit, blocks, kind))
    train(TrainConfig(**{**SMOKE, "variant": "weak", "dit_word_map_weight": 1.0, "dit_word_map_kind": "token"}),
          tmp_path, progress=False)
    assert made == [((0, 1, 2, 5, 6, 7), "token")]


def test_the_loss_figure_adds_a_word_map_panel_only_for_runs_that_have_the_term(tmp_path):
    from PIL import Image

    from fglens.toy.report import loss_figure

    plain, taught = tmp_path / "plain", tmp_path / "taught"
    for run, extra in ((plain, ""), (taught, "word_map,0,3.0\nword_map,1,2.5\n")):
        run.mkdir()
        (run / "loss.csv").write_text("phase,step,loss\nvae,0,1.0\nvae,1,0.5\ndit,0,2.0\ndit,1,1.0\n" + extra)
    two = Image.open(loss_figure({"plain": plain}, tmp_path / "two.png")).size
    three = Image.open(loss_figure({"plain": plain, "taught": taught}, tmp_path / "three.png")).size
    assert three[1] == two[1] and three[0] == round(two[0] * 3 / 2)


def test_the_loss_figure_draws_only_the_losses_its_runs_have(tmp_path):
    """A continuation trains no VAE: its figure has no empty VAE panel; a loss.csv with no known loss is refused."""
    from PIL import Image

    from fglens.toy.report import loss_figure

    plain, cont, empty = tmp_path / "plain", tmp_path / "cont", tmp_path / "empty"
    for run, rows in ((plain, "vae,0,1.0\nvae,1,0.5\ndit,0,2.0\ndit,1,1.0\n"),
                      (cont, "dit,0,2.0\ndit,1,1.0\nword_map,0,3.0\nword_map,1,2.5\n"), (empty, "")):
        run.mkdir()
        (run / "loss.csv").write_text("phase,step,loss\n" + rows)
    two = Image.open(loss_figure({"plain": plain}, tmp_path / "two.png")).size
    assert Image.open(loss_figure({"cont": cont}, tmp_path / "cont.png")).size == two
    three = Image.open(loss_figure({"plain": plain, "cont": cont}, tmp_path / "all.png")).size
    assert three[0] == round(two[0] * 3 / 2)
    with pytest.raises(ValueError, match="no loss rows"):
        loss_figure({"empty": empty}, tmp_path / "x.png")
