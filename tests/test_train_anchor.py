"""`FocalLoRA(loss="anchor")` (issue 16): flow matching plus a term that raises the trained layers' attention mass of
each masked word inside its region. The term against a float64 dense reference from the layer's own projections;
the gradient reaches only the adapter; a few steps raise the word's in-region mass as `fg.trace` records it; bad
data is refused before any step."""

from __future__ import annotations

import copy
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

import fglens as fg  # noqa: E402
from fglens.trace.tracer import Trace  # noqa: E402
from fglens.train.anchor import anchor_term, region_weights, token_grid, word_columns  # noqa: E402
from fglens.train.flow import encode_item, flow_loss  # noqa: E402
from fglens.train.objectives import _Anchor  # noqa: E402

PROMPT = fg.testing.TINY_PROMPT  # "a dog jumps over the red fence"
F, H, W = 5, 32, 48  # the tiny pipeline's call size: tokens (2, 2, 3) of 16 px, latent frames [0], [1..4]


def _masks() -> dict[str, np.ndarray]:
    dog = np.zeros((F, H, W), bool)  # per frame: moves right by 8 px a frame, 16 x 20 px
    for t in range(F):
        dog[t, 4:20, 2 + 4 * t: 22 + 4 * t] = True
    fence = np.zeros((H, W), np.float32)  # one mask for every frame, soft
    fence[20:, :] = 0.75
    return {"dog": dog, "red fence": fence}


def _item(seed: int = 0, masks=None) -> fg.train.TrainItem:
    video = np.random.default_rng(seed).integers(0, 256, (F, H, W, 3), dtype=np.uint8)
    return fg.train.TrainItem(f"v{seed}", fg.testing.reference_image(), PROMPT, ("dog",), video,
                              _masks() if masks is None else masks)


def _reference_weights(mask: np.ndarray) -> np.ndarray:
    """By hand: latent frame 0 = pixel frame 0, latent frame 1 = pixel frames 1-4; 16 x 16 px per token."""
    m = np.broadcast_to(mask, (F, H, W)).astype(np.float64)
    out = np.zeros((2, 2, 3))
    for f, frames in enumerate(([0], [1, 2, 3, 4])):
        for y in range(2):
            for x in range(3):
                out[f, y, x] = m[frames, 16 * y: 16 * y + 16, 16 * x: 16 * x + 16].mean()
    return out


def test_region_weights_are_each_tokens_covered_fraction():
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    assert token_grid(pipe, (F, H, W, 3)) == (2, 2, 3)
    for mask in _masks().values():
        got = region_weights(mask, (F, H, W), (2, 2, 3), temporal=4, patch_t=1)
        np.testing.assert_allclose(got.numpy(), _reference_weights(mask), rtol=1e-6, atol=1e-7)
    # the toy world's VAE (2x in time, 4x in space, 2x2 patches): 9 frames -> 5 token frames of 8 px
    toy = np.zeros((9, 64, 64), bool)
    toy[3:5, :8, :8] = True  # latent frame 2 = pixel frames 3, 4
    w = region_weights(toy, (9, 64, 64), (5, 8, 8), temporal=2, patch_t=1)
    assert float(w[2, 0, 0]) == 1.0 and float(w.sum()) == 1.0


def test_word_columns_are_the_tracers_word_positions():
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    ds = fg.testing.tiny_run(words=("dog", "red fence"), pipe=pipe)
    columns, n_real = word_columns(pipe, PROMPT, ["dog", "red fence"])
    assert columns == fg.store.decode_attrs(ds.attrs)["word_positions"]
    assert n_real == 8  # 7 words and </s>


@pytest.mark.parametrize("form", ["mass", "map"])
def test_the_anchor_term_against_a_float64_dense_reference(form):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    layers = ["blocks.1", "blocks.2"]
    fg.train.add_lora(pipe, layers, rank=2)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-trivial adapter: the reference must see the LoRA too
        for n, p in pipe.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    item = _item()
    enc = encode_item(pipe, item)
    inputs = {}

    def keep(name):
        def hook(module, args, kwargs):
            inputs[name] = (args[0] if args else kwargs["hidden_states"],
                            args[1] if len(args) > 1 else kwargs["encoder_hidden_states"])
        return hook

    hooks = [pipe.transformer.get_submodule(f"{layer}.attn2").register_forward_pre_hook(keep(layer), with_kwargs=True)
             for layer in layers]
    probe = fg.train.TextProbe(layers)
    try:
        with Trace(pipe, observers=[probe]):
            flow_loss(pipe, enc, torch.Generator().manual_seed(3))
    finally:
        for h in hooks:
            h.remove()
    columns, n_real = word_columns(pipe, item.prompt, list(item.masks))
    weights = {w: region_weights(m, item.video.shape, (2, 2, 3), temporal=4) for w, m in item.masks.items()}
    got = anchor_term(probe.calls, columns, weights, n_real, form)

    per_layer = []
    for layer in layers:  # float64, dense: the layer's own projections of its inputs, softmax over all 512 text keys
        attn = copy.deepcopy(pipe.transformer.get_submodule(f"{layer}.attn2")).double()
        x, context = (t.detach().double() for t in inputs[layer])
        text = context[:, context.shape[1] - 512:]  # the image's tokens first, then the prompt's 512
        q = attn.norm_q(attn.to_q(x)).unflatten(-1, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(text)).unflatten(-1, (attn.heads, -1))
        p = torch.softmax(torch.einsum("bnhd,bthd->bhnt", q, k) / q.shape[-1] ** 0.5, -1).mean(1)[0]  # [N, 512]
        terms = []
        for word, mask in item.masks.items():
            m = p[:, columns[word]].sum(-1)
            a = torch.from_numpy(_reference_weights(mask).reshape(-1))
            if form == "mass":
                terms.append(-(a * m.log()).sum() / a.sum())
            else:  # −log of the share of the word's map inside its region
                terms.append(-((a * m).sum() / m.sum()).log())
        per_layer.append(torch.stack(terms).mean())
    want = torch.stack(per_layer).mean().detach()
    assert float(want) > 0.01
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)


def test_the_gradient_reaches_only_the_adapter_of_the_chosen_layers(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    frozen = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    job = fg.train.FocalLoRA(layers=["blocks.1", "blocks.2"], rank=2, loss="anchor", anchor_weight=1.0, lr=1e-2)
    # the anchor term alone: its gradient reaches the adapter's to_q and to_k of both layers (B: A's is 0 at B = 0)
    alone = fg.testing.tiny_wan_i2v_pipeline()
    objective = _Anchor(alone, [_item()], job, ["blocks.1", "blocks.2"])
    fg.train.add_lora(alone, ["blocks.1", "blocks.2"], rank=2)
    objective(0, np.random.default_rng(0), 0, _item())["anchor"].backward()
    grads = {n: p.grad for n, p in alone.transformer.named_parameters() if p.grad is not None}
    assert {n for n, g in grads.items() if float(g.abs().sum()) > 0} == {
        f"blocks.{i}.attn2.{proj}.lora_B.focal.weight" for i in (1, 2) for proj in ("to_q", "to_k")}
    out = job.fit(pipe, [_item(0), _item(1)], steps=3, out=tmp_path, progress=False)
    trained = {n for n, p in pipe.transformer.named_parameters() if p.grad is not None}
    assert trained and all(".lora_" in n and n.split(".")[1] in ("1", "2") for n in trained)
    for n, p in pipe.transformer.named_parameters():  # the frozen model, bit-identical
        if ".lora_" not in n:
            assert torch.equal(p.detach(), frozen[n.replace(".base_layer", "")]), n
    curve = xr.open_zarr(out / "curve.zarr", consolidated=False)
    assert set(curve.data_vars) == {"loss", "flow", "anchor"}
    np.testing.assert_allclose(curve.loss.values, curve.flow.values + curve.anchor.values, rtol=1e-5)


def _in_region_mass(pipe, weights: torch.Tensor) -> tuple[float, float]:
    """`fg.trace`'s word map of "dog" at blocks.1 (cond, every step), weighted by the region and by its complement."""
    with fg.trace(pipe, record=fg.Record(words=["dog"], layers=["blocks.1"], maps=("word_map",))) as run:
        pipe(**fg.testing.tiny_call_kwargs("wan", steps=2))
    maps = run.dataset.word_map.sel(branch="cond", layer="blocks.1", word="dog").mean("step").values  # [f, y, x]
    a = weights.numpy()
    return float((maps * a).sum() / a.sum()), float((maps * (1 - a)).sum() / (1 - a).sum())


def test_a_few_steps_raise_the_words_mass_inside_its_region(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    left = np.zeros((H, W), bool)
    left[:, :16] = True  # the left third: one token column
    item = _item(masks={"dog": left})
    weights = region_weights(left, (F, H, W), (2, 2, 3), temporal=4)
    before_in, before_out = _in_region_mass(pipe, weights)
    job = fg.train.FocalLoRA(layers=["blocks.1"], rank=4, loss="anchor", anchor_weight=10.0, lr=2e-2)
    out = job.fit(pipe, [item], steps=12, out=tmp_path, progress=False)
    after_in, after_out = _in_region_mass(pipe, weights)
    curve = xr.open_zarr(out / "curve.zarr", consolidated=False)
    assert float(curve.anchor[-3:].mean()) < float(curve.anchor[:3].mean())
    assert after_in > before_in + 0.05, (before_in, after_in)
    # the term raises the word inside its region and does not lower it outside: here it rose outside as well
    # (docs/concepts.md says so); the flow term is what holds the rest of the attention in place
    assert after_out >= before_out


def test_the_map_form_is_what_training_lowers_on_its_own_forwards(tmp_path):
    # the same forward (item, noise and σ drawn from one seed) before and after 12 steps: the share of the word's map
    # inside its region rises there. Whether that carries over to sampling is the toy world's measurement
    # (docs/post-training.md): on this random tiny model it does not
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    left = np.zeros((H, W), bool)
    left[:, :16] = True
    item = _item(masks={"dog": left})
    job = fg.train.FocalLoRA(layers=["blocks.1"], rank=4, loss="anchor", anchor_weight=10.0, anchor_form="map",
                             lr=2e-2)

    def term():
        with torch.no_grad():
            return float(_Anchor(pipe, [item], job, ["blocks.1"])(0, np.random.default_rng(7), 0, item)["anchor"])

    before = term()
    out = job.fit(pipe, [item], steps=12, out=tmp_path, progress=False)
    after = term()
    assert after < 0.5 * before, (before, after)
    assert json.loads((out / "manifest.json").read_text())["job"]["anchor_form"] == "map"


def test_anchor_form_is_checked():
    with pytest.raises(ValueError, match=r"anchor_form must be one of \('mass', 'map'\)"):
        fg.train.FocalLoRA(layers=[1], loss="anchor", anchor_form="area")
    with pytest.raises(ValueError, match="anchor_form shapes the anchor term"):
        fg.train.FocalLoRA(layers=[1], loss="flow", anchor_form="map")
    assert "anchor_form" not in fg.train.FocalLoRA(layers=[1], loss="anchor").spec()  # old checkpoints resume


def _refused(pipe, job, data, tmp_path, message):
    with pytest.raises(ValueError, match=message):
        job.fit(pipe, data, steps=1, out=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert "focal" not in (getattr(pipe.transformer, "peft_config", None) or {})  # nothing was attached


@pytest.mark.parametrize("data, message", [
    (lambda: [fg.train.TrainItem("a", fg.testing.reference_image(), PROMPT)],
     r"needs a video and masks for every item; 1 of 1 have no video .*; 1 of 1 have no masks .*Accepted: "),
    (lambda: [_item(0), fg.train.TrainItem("b", fg.testing.reference_image(), PROMPT, ("dog",), _item(1).video)],
     r"1 of 2 have no masks \(e.g. \['b'\]\)"),
    (lambda: [_item(masks={"dog": np.ones((16, 24), bool)})], r"item 'v0', mask of 'dog': a mask must be \[H, W\]"),
    (lambda: [_item(masks={"dog": np.full((H, W), 2.0)})], r"boolean or in \[0, 1\]"),
    (lambda: [_item(masks={"cat": np.ones((H, W), bool)})], r"item 'v0': a masked word is not in its prompt: .*cat"),
    (lambda: [_item(masks={"dog": np.zeros((H, W), bool)})], "covers no video token"),
    (lambda: [_item(masks={})], "none of the 1 items has a masked word"),
])
def test_bad_anchor_data_is_refused_before_any_step(tmp_path, data, message):
    job = fg.train.FocalLoRA(layers=["blocks.1"], rank=2, loss="anchor")
    _refused(fg.testing.tiny_wan_i2v_pipeline(), job, data(), tmp_path, message)


def test_bad_anchor_jobs_are_refused():
    for weight in (float("nan"), float("inf"), -1.0, "1", True):
        with pytest.raises(ValueError, match="anchor_weight must be a finite number >= 0"):
            fg.train.FocalLoRA(layers=[1], loss="anchor", anchor_weight=weight)
    with pytest.raises(ValueError, match="anchor_weight weighs the anchor term"):
        fg.train.FocalLoRA(layers=[1], loss="flow", anchor_weight=2.0)
    with pytest.raises(ValueError, match="takes no teacher"):
        fg.train.FocalLoRA(layers=[1], loss="anchor", teacher=fg.Scale(["dog"], 2.0))
    assert fg.train.FocalLoRA(layers=[1], loss="anchor", anchor_weight=0).spec()["anchor_weight"] == 0
    assert "anchor_weight" not in fg.train.FocalLoRA(layers=[1], loss="flow").spec()  # old checkpoints resume


def test_anchor_weight_zero_is_the_flow_job(tmp_path):
    # the same draws: with λ = 0 the anchor job trains as flow does (the probe only reads; to float rounding)
    data = [_item(0), _item(1)]
    a, b = fg.testing.tiny_wan_i2v_pipeline(), fg.testing.tiny_wan_i2v_pipeline()
    torch.manual_seed(0)  # peft's initial A
    fg.train.FocalLoRA(layers=["blocks.1"], rank=2, loss="flow", lr=1e-2).fit(a, data, steps=2, out=tmp_path / "f",
                                                                            progress=False)
    torch.manual_seed(0)
    fg.train.FocalLoRA(layers=["blocks.1"], rank=2, loss="anchor", anchor_weight=0.0, lr=1e-2).fit(
        b, data, steps=2, out=tmp_path / "a", progress=False)
    flow = xr.open_zarr(tmp_path / "f" / "curve.zarr", consolidated=False).flow.values
    anchored = xr.open_zarr(tmp_path / "a" / "curve.zarr", consolidated=False)
    np.testing.assert_allclose(anchored.flow.values, flow, rtol=1e-5)
    assert (anchored.anchor.values > 0).all()
    pa = dict(a.transformer.named_parameters())
    for n, p in b.transformer.named_parameters():
        if ".lora_" in n:
            torch.testing.assert_close(p, pa[n], rtol=1e-5, atol=1e-6)


def test_toy_items_carry_per_frame_masks_also_from_a_toy_jsonl(tmp_path):
    toy = fg.toy.suite("train", n=5, seed=0)
    fg.toy.save_items(toy, tmp_path / "toy.jsonl")
    for data in (fg.train.items(toy), fg.train.items(tmp_path / "toy.jsonl")):
        assert [d.id for d in data] == [t.id for t in toy]
        for d, t in zip(data, toy, strict=True):
            assert d.video.shape == (9, 64, 64, 3) and set(d.masks) == set(t.masks())
            for word, mask in d.masks.items():
                assert mask.shape == (9, 64, 64) and np.array_equal(mask[0], t.masks()[word])
    moving = [d for d, t in zip(data, toy, strict=True) if t.instruction.kind == "move"]
    assert moving and any(not np.array_equal(m[0], m[-1]) for d in moving for m in d.masks.values())


def test_fglens_train_loss_anchor_on_a_toy_jsonl_and_its_usage_errors(tmp_path, capsys):
    from fglens.cli import main
    from fglens.eval import write_builtin_suite

    toy = tmp_path / "toy.jsonl"
    fg.toy.save_items(fg.toy.suite("train", n=3, seed=0), toy)
    out = tmp_path / "lora"
    code = main(["train", str(toy), "--pipeline", "toy-sink", "--layers", "3", "--loss", "anchor",
                 "--anchor-weight", "2", "--out", str(out), "--steps", "2", "--rank", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["job"]["loss"] == "anchor" and manifest["job"]["anchor_weight"] == 2.0
    suite = write_builtin_suite(tmp_path / "suite", width=48, height=32)
    for argv, message in [
        ([str(suite), "--loss", "anchor"], "needs a video and masks for every item"),
        ([str(toy), "--loss", "anchor", "--teacher", '{"type": "scale", "factor": 4}'], "takes no --teacher"),
        ([str(toy), "--loss", "flow", "--anchor-weight", "2"], "--anchor-weight is for --loss anchor"),
        ([str(toy), "--loss", "anchor", "--anchor-weight", "-1"], "anchor_weight must be a finite number >= 0"),
    ]:
        code = main(["train", *argv, "--pipeline", "toy-sink", "--layers", "3", "--out", str(tmp_path / "bad"),
                     "--steps", "1", "--quiet"])
        assert code == 2 and message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exit_:  # argparse: a finite number
        main(["train", str(toy), "--pipeline", "toy-sink", "--layers", "3", "--loss", "anchor", "--anchor-weight",
              "nan", "--out", str(tmp_path / "bad")])
    assert exit_.value.code == 2 and "must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
