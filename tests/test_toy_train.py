"""Training the toy pipeline: a few-step smoke run learns, resumes exactly, and writes a loadable pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from fglens.toy.train import TrainConfig, train

SMOKE = dict(vae_steps=3, vae_batch=1, pool=4, dit_steps=4, dit_batch=2, checkpoint_every=2, warmup=1)


def _state(path):
    from safetensors.torch import load_file

    return load_file(path / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    info = train(TrainConfig(**SMOKE), out, progress=False)
    return out, info


def test_a_run_writes_a_pipeline_that_loads_and_samples(straight):
    import fglens as fg

    out, info = straight
    assert len(info["vae_loss"]) == 3 and len(info["dit_loss"]) == 4
    meta = json.loads((out / "pipeline" / "toy.json").read_text())
    assert meta["variant"] == "base" and meta["planted_layers"] == [] and meta["config"]["seed"] == 0
    pipe = fg.toy.pipeline(path=out / "pipeline")
    item = fg.toy.suite("test", n=1)[0]
    frames = pipe(image=item.image, prompt=item.prompt, **{**fg.toy.CALL, "num_inference_steps": 2}).frames[0]
    assert frames.shape == (9, 64, 64, 3)
    assert fg.toy.planted_layers(pipe) == []


def test_a_resumed_run_ends_exactly_where_a_straight_run_does(straight, tmp_path):
    out, _ = straight
    first = TrainConfig(**{**SMOKE, "dit_steps": 2})
    train(first, tmp_path, progress=False)  # stops after 2 DiT steps (checkpoint at 2)
    info = train(TrainConfig(**SMOKE), tmp_path, progress=False)  # picks up the checkpoint, runs 2 more
    assert len(info["dit_loss"]) == 4
    a, b = _state(out), _state(tmp_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_loss_decreases_when_training_on_a_small_pool(tmp_path):
    info = train(TrainConfig(**{**SMOKE, "vae_steps": 12, "dit_steps": 12, "checkpoint_every": 12,
                                "vae_lr": 2e-3, "dit_lr": 2e-3}), tmp_path, progress=False)
    vae, dit = info["vae_loss"], info["dit_loss"]
    assert sum(vae[-3:]) / 3 < sum(vae[:3]) / 3
    assert sum(dit[-4:]) / 4 < sum(dit[:4]) / 4


def test_the_dits_object_weight_covers_each_latent_cell_an_object_touches():
    """Latent cell (f, y, x) encodes frames {0} (f = 0) or {2f-1, 2f} and pixels [4y, 4y+4) x [4x, 4x+4): it is weighted
    where an object covers any of them or a neighbouring cell's, and only there."""
    import numpy as np
    import torch.nn.functional as F

    from fglens.toy.train import _items, _rng, latent_object_weight
    from fglens.toy.world import coverage

    pairs = _items(_rng(0, "pool", 0), 3)
    w = latent_object_weight(pairs, 10.0).float()
    assert w.shape == (3, 1, 5, 16, 16) and set(w.unique().tolist()) == {1.0, 10.0}
    for b, (scene, ins) in enumerate(pairs):
        cover = coverage(scene, ins).sum(1) > 0  # [9, 64, 64]
        for f in range(5):
            frames = [0] if f == 0 else [2 * f - 1, 2 * f]
            touched = cover[frames].any(0).reshape(16, 4, 16, 4).any((1, 3))
            near = F.max_pool2d(torch.from_numpy(touched).float()[None], 3, 1, 1)[0].numpy() > 0
            np.testing.assert_array_equal(w[b, 0, f].numpy() == 10.0, near)
    assert 0.05 < float((w > 1).float().mean()) < 0.5  # objects are a small part of a frame


@pytest.mark.parametrize("weights", [dict(dit_frame_weight=3.0), dict(dit_frame_weight=2.0, dit_object_weight=10.0)])
def test_a_frame_weighted_run_trains(tmp_path, weights):
    from fglens.toy.train import latent_frame_weight

    assert latent_frame_weight(3, 2.0).flatten().tolist() == [1.0, 1.5, 2.0]
    info = train(TrainConfig(**{**SMOKE, **weights}), tmp_path, progress=False)
    assert len(info["dit_loss"]) == 4 and all(v == v for v in info["dit_loss"])


def test_the_frame_weight_changes_the_loss_of_the_same_batch(tmp_path):
    plain = train(TrainConfig(**{**SMOKE, "dit_steps": 1}), tmp_path / "plain", progress=False)["dit_loss"]
    weighted = train(TrainConfig(**{**SMOKE, "dit_steps": 1, "dit_frame_weight": 3.0}), tmp_path / "weighted",
                     progress=False)["dit_loss"]
    assert plain[0] != weighted[0]


def test_oversampled_kinds_are_drawn_in_proportion_to_their_weight():
    import numpy as np

    from fglens.toy.train import _items, _rng, pool_probabilities

    pairs = _items(_rng(0, "pool", 0), 200)
    kinds = np.array([ins.kind for _, ins in pairs])
    p = pool_probabilities(pairs, (("approach", 4.0), ("swap", 0.5)))
    assert p.sum() == pytest.approx(1.0)
    still = p[kinds == "still"]
    assert len(set(still)) == 1 and (kinds == "approach").any() and (kinds == "swap").any()
    assert p[kinds == "approach"] / still[0] == pytest.approx(4.0)
    assert p[kinds == "swap"] / still[0] == pytest.approx(0.5)
    assert np.all(pool_probabilities(pairs, ()) == 1 / 200)


def test_an_oversampled_run_draws_other_batches_and_records_its_weights(tmp_path):
    plain = train(TrainConfig(**{**SMOKE, "dit_steps": 1}), tmp_path / "plain", progress=False)["dit_loss"]
    info = train(TrainConfig(**{**SMOKE, "dit_steps": 1, "dit_oversample": (("move", 50.0),)}), tmp_path / "over",
                 progress=False)
    assert info["dit_loss"][0] != plain[0]
    meta = json.loads((tmp_path / "over" / "pipeline" / "toy.json").read_text())
    assert meta["config"]["dit_oversample"] == [["move", 50.0]]


def test_an_object_weighted_run_trains(tmp_path):
    info = train(TrainConfig(**{**SMOKE, "dit_object_weight": 10.0}), tmp_path, progress=False)
    assert len(info["dit_loss"]) == 4 and all(v == v for v in info["dit_loss"])
    assert json.loads((tmp_path / "pipeline" / "toy.json").read_text())["config"]["dit_object_weight"] == 10.0


def test_the_trainable_prompt_encoding_is_what_sampling_gives_the_dit():
    from fglens.toy.model import build_pipeline
    from fglens.toy.text import TextEncoding

    pipe = build_pipeline(seed=0)
    prompts = ["the green circle moves to the white triangle", "", "the camera pans up"]
    ref, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512,
                                device=torch.device("cpu"))
    got = TextEncoding(pipe, train=True)(prompts)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert got.requires_grad and not TextEncoding(pipe)(prompts).requires_grad
    # the cache encodes the prompts as another batch (sorted, deduplicated): the same states to float32 rounding
    torch.testing.assert_close(TextEncoding(pipe)(prompts), ref, rtol=0, atol=1e-5)


def test_a_run_with_text_lr_trains_the_text_encoder_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from fglens.toy.model import build_pipeline

    def encoder(path):
        return load_file(path / "pipeline" / "text_encoder" / "model.safetensors")

    cfg = TrainConfig(**{**SMOKE, "text_lr": 1e-3})
    straight = tmp_path / "straight"
    train(cfg, straight, progress=False)
    start = build_pipeline(seed=0).text_encoder.state_dict()
    after = encoder(straight)
    assert any(not torch.equal(after[k], start[k]) for k in after if k in start)  # the encoder moved
    resumed = tmp_path / "resumed"
    train(TrainConfig(**{**SMOKE, "text_lr": 1e-3, "dit_steps": 2}), resumed, progress=False)
    train(cfg, resumed, progress=False)
    for a, b in ((_state(straight), _state(resumed)), (after, encoder(resumed))):
        assert all(torch.equal(a[k], b[k]) for k in a)
    frozen = tmp_path / "frozen"  # text_lr 0 (the default): the seeded encoder, untouched
    train(TrainConfig(**SMOKE), frozen, progress=False)
    assert all(torch.equal(v, start[k]) for k, v in encoder(frozen).items() if k in start)


def test_the_weak_variant_plants_its_layers(tmp_path):
    import fglens as fg

    info = train(TrainConfig(**{**SMOKE, "variant": "weak", "planted": (2, 5)}), tmp_path, progress=False)
    assert info["planted_layers"] == ["blocks.2", "blocks.5"]
    assert fg.toy.planted_layers(fg.toy.pipeline(path=tmp_path / "pipeline")) == ["blocks.2", "blocks.5"]


def test_a_planted_only_run_changes_the_planted_blocks_and_nothing_else(tmp_path):
    from fglens.toy.model import build_pipeline

    cfg = TrainConfig(**{**SMOKE, "variant": "weak", "planted": (2, 5), "planted_only": True})
    train(cfg, tmp_path, progress=False)
    start = build_pipeline(seed=0).transformer.state_dict()
    after = _state(tmp_path)
    changed = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("blocks.") else k
               for k in after if not torch.equal(after[k], start[k])}
    assert changed == {"blocks.2", "blocks.5"}


def test_the_planting_re_initialises_only_the_planted_blocks_text_keys():
    from fglens.toy.model import build_pipeline
    from fglens.toy.train import reinit_planted_keys

    dit = build_pipeline(seed=0).transformer
    with torch.no_grad():  # as if trained: no parameter at its initial value
        for p in dit.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    cfg = TrainConfig(variant="weak", planted=(2, 5))
    reinit_planted_keys(dit, cfg)
    changed = {k for k, v in dit.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.{i}.attn2.{name}" for i in (2, 5)
                       for name in ("to_k.weight", "to_k.bias", "norm_k.weight")}
    again, rng = {k: v.clone() for k, v in dit.state_dict().items()}, torch.random.get_rng_state()
    reinit_planted_keys(dit, cfg)  # seeded: the same keys again, and the global RNG is left alone
    assert all(torch.equal(v, again[k]) for k, v in dit.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.parametrize("bad, match", [
    (dict(variant="strong"), "unknown variant"),
    (dict(dit_steps=0), "dit_steps must be a positive integer"),
    (dict(dit_lr=float("nan")), "dit_lr must be a finite number"),
    (dict(planted_p=-0.1), "planted_p must be a finite number"),
    (dict(planted_p=1.5), r"planted_p is a fraction in \[0, 1\]"),
    (dict(dit_object_weight=0.5), r"dit_object_weight is a weight >= 1"),
    (dict(dit_object_weight=float("inf")), "dit_object_weight must be a finite number"),
    (dict(text_lr=float("nan")), "text_lr must be a finite number"),
    (dict(dit_frame_weight=0.5), r"dit_frame_weight is the last latent frame's weight >= 1"),
    (dict(variant="weak", text_lr=1e-4), "text_lr must be 0 for the weak variant"),
    (dict(dit_oversample=(("approch", 4.0),)), "dit_oversample names instruction kinds"),
    (dict(dit_oversample=(("approach", float("nan")),)), "must be a finite number > 0"),
    (dict(dit_oversample=(("approach", 0.0),)), "must be a finite number > 0"),
    (dict(dit_layers=0), "dit_layers must be a positive integer"),
    (dict(dit_head_dim=15), "attention_head_dim must be even"),
    (dict(variant="weak", dit_layers=4, planted=(3, 4)), r"planted must name blocks in 0..3"),
    (dict(device="gpu"), "device must be a torch device"),
    *([(dict(device="cuda"), "this torch sees no CUDA device")] if not torch.cuda.is_available() else []),
])
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_the_learning_rate_warms_up_holds_then_cools_down_to_zero():
    from fglens.toy.train import TrainConfig, dit_lr

    cfg = TrainConfig(dit_steps=1000, warmup=100, cooldown=200, dit_lr=1e-3)
    assert dit_lr(cfg, 0) == pytest.approx(1e-5) and dit_lr(cfg, 99) == pytest.approx(1e-3)
    assert dit_lr(cfg, 799) == pytest.approx(1e-3)  # the last step before the cool-down
    assert dit_lr(cfg, 900) == pytest.approx(0.5e-3) and dit_lr(cfg, 999) == pytest.approx(1e-3 / 200)
    longer = TrainConfig(dit_steps=5000, warmup=100, cooldown=200, dit_lr=1e-3)  # resumed with more steps:
    assert [dit_lr(longer, s) for s in range(800)] == [dit_lr(cfg, s) for s in range(800)]  # same history
    with pytest.raises(ValueError, match="cooldown must be an integer in 0..dit_steps"):
        TrainConfig(dit_steps=10, cooldown=11)


def test_toy_losses_draws_runs_and_refuses_bad_arguments(tmp_path, capsys):
    from fglens.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "loss.csv").write_text("phase,step,loss\nvae,0,1.0\nvae,1,0.5\ndit,0,2.0\ndit,1,1.0\n")
    assert main(["toy", "losses", f"base={run}", "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert main(["toy", "losses", str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert "is not NAME=RUN" in capsys.readouterr().err
    assert main(["toy", "losses", f"base={tmp_path}", "--out", str(tmp_path / "x.png")]) == 2
    assert "has no loss.csv" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--strengths", "nan"], r"strengths must be one or more finite numbers >= 0; got \[nan\]"),
    (["--strengths=-1,2"], r"strengths must be one or more finite numbers >= 0"),
    (["--alphas", "0.5,2"], r"alphas must be one or more finite numbers \[0, 1\]; got \[0.5, 2.0\]"),
])
def test_toy_report_refuses_a_bad_sweep_grid_before_any_work(tmp_path, capsys, argv, message):
    import re

    from fglens.cli import main

    out = tmp_path / "report"
    assert main(["toy", "report", "--out", str(out), *argv]) != 0
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()  # refused before anything was written or sampled


def test_shipping_runs_keeps_the_derived_variants_records(straight, tmp_path):
    """`ship` rewrites the weights folder from the runs; the sink variant has no weights of its own, only its
    record (sink.json), which must survive and stay in the manifest (it did not, before the fifth version)."""
    from fglens.toy.load import WEIGHTS, manifest, ship

    out, _ = straight
    root = tmp_path / "weights"
    root.mkdir()
    (root / "sink.json").write_text((WEIGHTS / "sink.json").read_text())
    digests = ship({"base": out, "weak": out}, root=root)
    assert (root / "sink.json").read_text() == (WEIGHTS / "sink.json").read_text()
    assert "sink.json" in digests and manifest(root) == digests
    assert {"base.json", "weak.json", "shared/text_encoder/model.safetensors"} <= set(digests)


SMALL = dict(dit_layers=3, dit_heads=2, dit_head_dim=8, dit_ffn=32)


def test_a_run_of_another_dit_size_writes_a_pipeline_every_command_can_trace(tmp_path):
    import fglens as fg

    train(TrainConfig(**SMOKE, **SMALL), tmp_path, progress=False)
    pipe = fg.toy.pipeline(path=tmp_path / "pipeline")
    cfg = pipe.transformer.config
    assert (cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim, cfg.ffn_dim) == (3, 2, 8, 32)
    item = fg.toy.suite("test", n=1)[0]
    with fg.trace(pipe, record=fg.Record(words=item.words)) as run:
        pipe(image=item.image, prompt=item.prompt, **{**fg.toy.CALL, "num_inference_steps": 2})
    assert list(run.dataset.layer.values) == ["blocks.0", "blocks.1", "blocks.2"]


def test_dit_from_a_pipeline_of_another_size_is_refused_before_any_pool_is_encoded(straight, tmp_path):
    out, _ = straight
    with pytest.raises(ValueError, match=r"holds a DiT of .*num_layers': 8.*configured for .*num_layers': 3"):
        train(TrainConfig(**SMOKE, **SMALL), tmp_path, vae_from=out / "vae", dit_from=out / "pipeline",
              progress=False)
    assert not (tmp_path / "pool.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_run_resumes_exactly_and_saves_a_pipeline_for_the_cpu(tmp_path):
    cfg = TrainConfig(**{**SMOKE, "device": "cuda"})
    train(cfg, tmp_path / "straight", progress=False)
    train(TrainConfig(**{**SMOKE, "device": "cuda", "dit_steps": 2}), tmp_path / "resumed", progress=False)
    train(cfg, tmp_path / "resumed", progress=False)
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a) and all(v.device.type == "cpu" for v in a.values())


def test_growing_a_dit_deeper_keeps_exactly_what_it_computes():
    from fglens.toy.model import Z_DIM, build_pipeline
    from fglens.toy.train import grow_depth

    shallow = build_pipeline(seed=0).transformer
    with torch.no_grad():  # as if trained: no output projection at its initial value
        for p in shallow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    deep = build_pipeline(seed=1, dit={"num_layers": 16}).transformer
    assert grow_depth(deep, shallow) == list(range(1, 16, 2))
    torch.manual_seed(0)
    args = (torch.randn(2, 2 * Z_DIM + 2, 5, 16, 16),)
    kwargs = dict(timestep=torch.tensor([300.0, 900.0]), encoder_hidden_states=torch.randn(2, 512, 32),
                  encoder_hidden_states_image=torch.randn(2, 17, 16), return_dict=False)
    with torch.no_grad():
        assert torch.equal(deep(*args, **kwargs)[0], shallow(*args, **kwargs)[0])
    with pytest.raises(ValueError, match="shallower DiT of the same width"):
        grow_depth(build_pipeline(seed=0, dit={"num_layers": 12, "ffn_dim": 96}).transformer, shallow)


def test_a_grown_run_trains_from_a_shallower_pipeline(straight, tmp_path):
    out, _ = straight
    info = train(TrainConfig(**SMOKE, dit_layers=10, dit_grow=True), tmp_path, vae_from=out / "vae",
                 dit_from=out / "pipeline", progress=False)
    assert len(info["dit_loss"]) == 4 and info["config"]["dit_grow"]
    assert sum(1 for k in _state(tmp_path) if k.endswith("attn1.to_out.0.weight")) == 10
    with pytest.raises(ValueError, match="give --dit-from a shallower trained pipeline"):
        train(TrainConfig(**SMOKE, dit_layers=10, dit_grow=True), tmp_path / "none", progress=False)
