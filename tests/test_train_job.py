"""`fg.train.FocalLoRA` with the distill loss (issue 16, items 1-3): the student learns the teacher's post-edit
attention along the teacher's own trajectories; only the adapter trains; checkpoints resume bit-identically; the
saved adapter loads with diffusers alone and moves the trained layer's attention toward the teacher's."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

import fglens as fg  # noqa: E402
from fglens.trace.tracer import Trace  # noqa: E402
from fglens.train.objectives import _adapters_off, _student_kl, _Teacher  # noqa: E402
from fglens.train.probe import kl_per_query  # noqa: E402

PROMPT = "a dog jumps over the red fence"
CALL = {"steps": 2}


def _data(n: int = 2):
    return [fg.train.TrainItem(f"item{i}", fg.testing.reference_image(), PROMPT, ("dog",)) for i in range(n)]


def _teacher(factor: float = 4.0):
    return fg.Scale(["dog"], factor, where=fg.Where(layers=["blocks.1"]))


def _job(**kw):
    return fg.train.FocalLoRA(**{"layers": ["blocks.1"], "rank": 2, "teacher": _teacher(), "lr": 1e-2,
                                 "call": CALL, "checkpoint_every": 2, **kw})


class _ByForward(fg.train.TextProbe):
    """Keeps every forward's calls, by (step, branches)."""

    def __init__(self, layers):
        super().__init__(layers)
        self.seen = {}

    def end_forward(self):
        self.seen[(self.ctx.step, tuple(self.ctx.branches))] = self.calls


def _dog_mass(pipe) -> float:
    with fg.trace(pipe, record=fg.Record(words=["dog"], layers=["blocks.1"], stats=["word_mass"])) as run:
        pipe(**fg.testing.tiny_call_kwargs("wan", steps=2))
    return float(run.dataset.word_mass.sel(branch="cond").mean())


def test_probe_reads_the_post_edit_attention_the_recorder_records():
    # the probe's distribution (all 512 keys, float32, differentiable) against the recorder's word map (pads
    # collapsed, chunked; itself tested against a float64 dense reference), on an edited call
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    probe = _ByForward(["blocks.1"])
    record = fg.Record(words=["dog"], layers=["blocks.1"], stats=["word_mass"], maps=("word_map",), steps=[1])
    with Trace(pipe, record=record, edit=_teacher(), observers=[probe]) as run:
        pipe(**fg.testing.tiny_call_kwargs("wan", steps=2))
    call = probe.seen[(1, ("cond",))]["blocks.1"]
    assert call.biases  # the edit acted here
    dog = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]["dog"]
    p = fg.train.text_distribution(call)
    mass = p.mean(1)[..., dog].sum(-1)[0]  # [N]
    recorded = run.dataset.word_map.sel(step=1, branch="cond", layer="blocks.1", word="dog").values.reshape(-1)
    np.testing.assert_allclose(mass.numpy(), recorded, rtol=1e-5, atol=1e-6)
    unedited = fg.train.text_distribution(call, edited=False).mean(1)[..., dog].sum(-1)[0]
    assert float((mass - unedited).min()) > 0  # Scale(4) raised the word's mass at every query


def test_distill_loss_is_zero_for_an_identity_teacher_and_decreases_when_trained(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    out = _job(teacher=_teacher(1.0), lr=1e-6).fit(pipe, _data(1), steps=1, out=tmp_path / "id", progress=False)
    curve = xr.open_zarr(out / "curve.zarr", consolidated=False)
    assert abs(float(curve.kl[0])) < 1e-6  # teacher = base model = student at init (LoRA B = 0)
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    out = _job().fit(pipe, _data(1), steps=30, out=tmp_path / "scale", progress=False)
    assert (xr.open_zarr(out / "curve.zarr", consolidated=False).kl.values > 0).any()
    # the KL over the teacher's whole trajectory (2 steps x cond/uncond), before (LoRA off) and after training
    job, layers = _job(), ["blocks.1"]
    forwards = _Teacher(pipe, job, layers).forwards(0, _data(1)[0])
    with torch.no_grad():
        after = [float(_student_kl(pipe, layers, f)) for f in forwards]
        with _adapters_off(pipe):
            before = [float(_student_kl(pipe, layers, f)) for f in forwards]
    assert before[0] > 1e-3 and sum(after) < 0.5 * sum(before), (before, after)


def test_only_the_adapter_trains_and_the_frozen_model_is_unchanged(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    job = _job()
    job.fit(pipe, _data(1), steps=2, out=tmp_path, progress=False)
    grads = {n: p.grad for n, p in pipe.transformer.named_parameters()}
    trained = {n for n, g in grads.items() if g is not None}
    assert trained and all(".lora_" in n and n.startswith("blocks.1.attn2.to_") for n in trained)
    assert all(grads[n] is None for n in grads if ".lora_" not in n)
    after = pipe.transformer.state_dict()
    for k, v in before.items():  # base weights keep their names under peft (base_layer)
        key = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], v), k


def test_the_saved_adapter_loads_with_diffusers_and_moves_attention_toward_the_teacher(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    out = _job().fit(pipe, _data(2), steps=30, out=tmp_path, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == ["blocks.1"] and manifest["job"]["loss"] == "distill" and manifest["steps"] == 30
    assert (out / "curve.png").stat().st_size > 0
    base = _dog_mass(fg.testing.tiny_wan_i2v_pipeline())
    fresh = fg.testing.tiny_wan_i2v_pipeline()
    fresh.load_lora_weights(str(out), adapter_name="focal")  # diffusers' own loader, no fglens
    with fg.trace(fresh, record=fg.Record(words=["dog"], layers=["blocks.1"], stats=["word_mass"]),
                  edit=None) as run:
        fresh(**fg.testing.tiny_call_kwargs("wan", steps=2))
    tuned = float(run.dataset.word_mass.sel(branch="cond").mean())
    teacher = fg.testing.tiny_wan_i2v_pipeline()
    with fg.trace(teacher, record=fg.Record(words=["dog"], layers=["blocks.1"], stats=["word_mass"]),
                  edit=_teacher()) as run:
        teacher(**fg.testing.tiny_call_kwargs("wan", steps=2))
    target = float(run.dataset.word_mass.sel(branch="cond").mean())
    assert base < tuned <= target * 1.05
    assert tuned - base > 0.3 * (target - base)  # most of the way, in 30 steps


def test_resume_from_a_checkpoint_continues_bit_identically(tmp_path):
    straight = fg.testing.tiny_wan_i2v_pipeline()
    _job().fit(straight, _data(2), steps=4, out=tmp_path / "a", progress=False)
    resumed = fg.testing.tiny_wan_i2v_pipeline()
    _job().fit(resumed, _data(2), steps=2, out=tmp_path / "b", progress=False)
    again = fg.testing.tiny_wan_i2v_pipeline()  # a new process would start from a fresh pipeline too
    _job().fit(again, _data(2), steps=4, out=tmp_path / "b", progress=False)
    a = {n: p for n, p in straight.transformer.named_parameters() if ".lora_" in n}
    b = {n: p for n, p in again.transformer.named_parameters() if ".lora_" in n}
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    ca = xr.open_zarr(tmp_path / "a" / "curve.zarr", consolidated=False).kl.values
    cb = xr.open_zarr(tmp_path / "b" / "curve.zarr", consolidated=False).kl.values
    assert np.array_equal(ca, cb)
    with pytest.raises(ValueError, match="other settings"):
        _job(lr=1e-3).fit(fg.testing.tiny_wan_i2v_pipeline(), _data(2), steps=6, out=tmp_path / "b", progress=False)


def test_distill_on_joint_attention_hunyuan(tmp_path):
    pipe = fg.testing.tiny_hunyuan_i2v_pipeline()
    teacher = fg.Scale(["dog"], 4.0, where=fg.Where(layers=["double.1"]))
    job = fg.train.FocalLoRA(layers=["double.1"], rank=2, teacher=teacher, lr=1e-2, call=CALL)
    image = fg.testing.tiny_call_kwargs("hunyuan")["image"]
    out = job.fit(pipe, [fg.train.TrainItem("a", image, PROMPT)], steps=6, out=tmp_path, progress=False)
    kl = xr.open_zarr(out / "curve.zarr", consolidated=False).kl.values
    assert kl[0] > 0 and kl[-1] < kl[0]
    names = [n for n, p in pipe.transformer.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("transformer_blocks.1.attn.") for n in names)


@pytest.mark.parametrize("kw, message", [
    ({"layers": ["blocks.9"]}, "blocks.9"),
    ({"rank": 0}, "rank must be a positive integer"),
    ({"loss": "anchorz"}, "unknown loss .anchorz."),
    ({"teacher": None}, "needs a teacher"),
    ({"lr": float("nan")}, "lr must be"),
    ({"call": {"stepz": 2}}, "unknown call option"),
])
def test_bad_jobs_are_refused_before_any_step(tmp_path, kw, message):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    with pytest.raises((ValueError, KeyError), match=message):
        _job(**kw).fit(pipe, _data(1), steps=1, out=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        _job().fit(pipe, _data(1), steps=0, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="no training items"):
        _job().fit(pipe, [], steps=1, out=tmp_path, progress=False)


def test_fglens_train_command_end_to_end_and_its_usage_errors(tmp_path, capsys):
    from fglens.cli import main
    from fglens.eval import write_builtin_suite

    suite = write_builtin_suite(tmp_path / "suite", width=48, height=32)
    out = tmp_path / "lora"
    code = main(["train", str(suite), "--pipeline", "tiny-wan", "--layers", "1", "--out", str(out), "--steps", "3",
                 "--lr", "1e-2", "--sample-steps", "2", "--teacher", '{"type": "scale", "factor": 4}', "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "pytorch_lora_weights.safetensors" in {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["job"]["teacher"] == {"type": "scale", "factor": 4, "layers": [1]} and manifest["steps"] == 3
    for argv, message in [
        (["--layers", "auto"], "--layers auto needs --diagnosis"),
        (["--layers", "1"], "needs --teacher"),
        (["--layers", "1", "--teacher", "[1]"], "must be a JSON object"),
        (["--layers", "7", "--teacher", '{"type": "scale", "factor": 4}'], "blocks"),
    ]:
        code = main(["train", str(suite), "--pipeline", "tiny-wan", "--out", str(tmp_path / "bad"), "--steps", "1",
                     "--quiet", *argv])
        assert code == 2 and message in capsys.readouterr().err, argv


def _video_item(seed: int = 0):
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    return fg.train.TrainItem(f"v{seed}", fg.testing.reference_image(), PROMPT, ("dog",), video)


def test_flow_loss_trains_the_adapter_on_videos(tmp_path):
    from fglens.train.flow import encode_item, flow_loss

    pipe = fg.testing.tiny_wan_i2v_pipeline()
    item = _video_item()

    def held_out() -> float:  # the same noise and sigma draws before and after
        enc = encode_item(pipe, item)
        with torch.no_grad():
            return float(np.mean([float(flow_loss(pipe, enc, torch.Generator().manual_seed(s))) for s in range(16)]))

    job = fg.train.FocalLoRA(layers=["blocks.1", "blocks.2"], rank=4, loss="flow", lr=1e-2)
    fg.train.add_lora(pipe, ["blocks.1", "blocks.2"], rank=4)  # identity at init: the base model's loss
    before = held_out()
    out = job.fit(pipe, [item], steps=40, out=tmp_path, progress=False)
    after = held_out()
    assert after < before, (before, after)
    curve = xr.open_zarr(out / "curve.zarr", consolidated=False)
    assert set(curve.data_vars) == {"loss", "flow"} and curve.sizes["step"] == 40
    trained = {n for n, p in pipe.transformer.named_parameters() if p.grad is not None}
    assert trained and all(".lora_" in n and n.split(".")[1] in ("1", "2") for n in trained)


def test_flow_refuses_what_it_cannot_use(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    with pytest.raises(ValueError, match="needs a video for every item; 1 of 2"):
        fg.train.FocalLoRA(layers=[1], loss="flow").fit(pipe, [_video_item(), _data(1)[0]], steps=1, out=tmp_path)
    with pytest.raises(ValueError, match="takes no teacher"):
        fg.train.FocalLoRA(layers=[1], loss="flow", teacher=_teacher())
    with pytest.raises(ValueError, match="Wan2.1-style image-to-video"):
        fg.train.FocalLoRA(layers=["double.1"], loss="flow").fit(fg.testing.tiny_hunyuan_i2v_pipeline(),
                                                                 [_video_item()], steps=1, out=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def _rank_main(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    import torch.distributed as dist

    torch.set_num_threads(1)
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    try:
        _job(batch=4).fit(pipe, _data(3), steps=3, out=out, progress=False)
        torch.save({n: p.detach().clone() for n, p in pipe.transformer.named_parameters() if ".lora_" in n},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_the_adapter_one_process_trains_with_the_same_global_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, str(tmp_path / "two"), port), nprocs=2, join=True)
    one = fg.testing.tiny_wan_i2v_pipeline()
    _job(batch=4).fit(one, _data(3), steps=3, out=tmp_path / "one", progress=False)
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    single = {n: p for n, p in one.transformer.named_parameters() if ".lora_" in n}
    assert ranks[0].keys() == single.keys()
    for name, p in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name])  # every rank took the same steps
        torch.testing.assert_close(ranks[0][name], p.detach(), rtol=1e-5, atol=1e-6)  # = one process
    assert (tmp_path / "two" / "pytorch_lora_weights.safetensors").is_file()  # written once, by rank 0
    a = xr.open_zarr(tmp_path / "one" / "curve.zarr", consolidated=False).kl.values
    b = xr.open_zarr(tmp_path / "two" / "curve.zarr", consolidated=False).kl.values
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_collapsed_pad_keys_give_the_same_kl_as_all_512_keys():
    # FocalLoRA stores and trains on Wan's pad keys as one column: the KL must be that over all keys, edits included
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    probe = _ByForward(["blocks.1"])
    anchor = fg.AnchorMask.from_mask(torch.ones(2, 3), "dog", strength=2.0)
    edit = fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer(src=["blocks.3"], dst=["blocks.1"], alpha=0.5),
                            layers=["blocks.1"], steps=None)
    with Trace(pipe, edit=edit, observers=[probe]):
        pipe(**fg.testing.tiny_call_kwargs("wan", steps=2))
    teacher = probe.seen[(1, ("cond",))]["blocks.1"]
    assert teacher.biases and teacher.mixes
    lengths = fg.adapters.adapter_for(pipe.transformer).text_lengths((), {
        "encoder_hidden_states": pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0]})
    n_real = fg.train.probe.real_columns(teacher.key, lengths)
    assert n_real is not None and n_real < 20  # a short prompt, 512 rows
    with Trace(pipe, observers=[probe]):
        pipe(**fg.testing.tiny_call_kwargs("wan", steps=2))
    student = probe.seen[(1, ("cond",))]["blocks.1"]
    full = kl_per_query(fg.train.text_distribution(teacher), fg.train.log_text_distribution(student))
    collapsed = kl_per_query(fg.train.text_distribution(teacher, n_real=n_real),
                             fg.train.log_text_distribution(student, n_real))
    assert float(full.mean()) > 1e-3
    torch.testing.assert_close(collapsed, full, rtol=1e-4, atol=1e-6)


def test_text_keys_all_alike_keep_their_real_columns(tmp_path):
    # the toy world's sink planting zeroes a layer's text key weights: every key is then the same, real ones included;
    # collapsing by key equality alone would leave one column and a KL of 0 (nothing to learn)
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    with torch.no_grad():
        pipe.transformer.blocks[1].attn2.to_k.weight.zero_()
    out = _job().fit(pipe, _data(1), steps=6, out=tmp_path, progress=False)
    assert (xr.open_zarr(out / "curve.zarr", consolidated=False).kl.values > 1e-4).any()


def test_a_recipe_teacher_anchors_on_the_videos_latent_grid():
    # built per item as the evaluation builds it: the anchor's masks on the call's grid (64x96 px -> 4x6 tokens of
    # 16 px), not on the reference image's (48x32 px -> 2x3)
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    job = _job(teacher={"type": "anchor_mask", "clip": "tiny", "anchor_words": "all", "layers": [1]},
               call={"steps": 2, "height": 64, "width": 96})
    item = _data(1)[0]
    kwargs = fg.jobs.CallOptions.from_mapping(job.call).kwargs(pipe, prompt=item.prompt, image=item.image)
    anchor = _Teacher(pipe, job, ["blocks.1"]).edit_for(item, kwargs)
    assert tuple(anchor.masks.shape[-2:]) == (4, 6)


def test_the_probe_reads_a_masked_text_call_as_the_kernel_masks_it():
    # LTX-Video masks its padded T5 keys: the probe's distributions (distill's teacher and student) apply that mask,
    # so the masked keys get exactly 0, equal to a float64 softmax of the call's own q, k and mask
    from fglens.train.probe import log_text_distribution, text_distribution

    pipe = fg.testing.tiny_ltx_pipeline()
    probe = fg.train.TextProbe(["blocks.1"])
    with Trace(pipe, observers=[probe]):
        pipe(image=fg.testing.reference_image(64, 32), prompt="a dog jumps", negative_prompt="a long blurry bad video",
             height=32, width=64, num_frames=9, num_inference_steps=1, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    call = probe.calls["blocks.1"]
    assert call.attn_mask is not None
    q, k = call.query.double(), call.key.double()
    scale = call.scale if call.scale is not None else q.shape[-1] ** -0.5
    mask = call.attn_mask.double() if call.attn_mask.dtype != torch.bool else \
        torch.zeros(call.attn_mask.shape, dtype=torch.float64).masked_fill(~call.attn_mask, float("-inf"))
    logits = torch.einsum("bnhd,bthd->bhnt", q, k) * scale + mask.reshape(mask.shape[0], -1, 1, mask.shape[-1])
    want = torch.softmax(logits, -1)
    got = text_distribution(call, edited=False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert (got[want == 0] == 0).all()
    torch.testing.assert_close(log_text_distribution(call).exp().double(), want, rtol=1e-5, atol=1e-6)
