"""diffusers' step caches under fg.trace (issue 17, docs/compatibility.md): a layer a cache skips at a step is
recorded as missing — NaN, flagged in the run's ``skipped`` variable — never as a stale value; an edit due at a
skipped layer is reported; recording never changes the frames; a forward whose blocks were all skipped keeps its
step. Which layers ran is read independently, from forward pre-hooks on the attention modules."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

import fglens as fg
from fglens import testing

STEPS = 4


def _wan_call(pipe):
    kwargs = testing.tiny_call_kwargs("wan", steps=STEPS)
    return pipe(**kwargs, guidance_scale=3.0).frames


def _hunyuan_call(pipe):
    return pipe(**testing.tiny_call_kwargs("hunyuan", steps=STEPS), guidance_scale=3.0).frames


class Calls:
    """Which attention modules computed in each transformer forward, seen by pre-hooks on their ``to_q`` (a cache
    that replaces an attention module's forward never runs it). With classifier-free guidance (Wan) forward k is
    step k // 2, branch cond (even k) or uncond (odd k); HunyuanVideo (guidance embedded) has one per step."""

    def __init__(self, transformer, modules: dict[str, str], per_step: int = 2):
        self.per_step = per_step
        self.forwards: list[set[str]] = []
        self.handles = [transformer.register_forward_pre_hook(lambda *_: self.forwards.append(set()))]
        for layer, path in modules.items():
            module = transformer.get_submodule(f"{path}.to_q")
            self.handles.append(module.register_forward_pre_hook(lambda *_, name=layer: self.forwards[-1].add(name)))

    def not_run(self, layers: list[str], branch: str) -> np.ndarray:
        """[step, layer] True where the layer's module did not run in that branch's forward."""
        offset = 0 if branch == "cond" else 1
        assert len(self.forwards) == self.per_step * STEPS
        return np.array([[name not in self.forwards[self.per_step * s + offset] for name in layers]
                         for s in range(STEPS)])

    def remove(self):
        for h in self.handles:
            h.remove()


def _record():
    return fg.Record(words=["dog"], branches=("cond", "uncond"))


def _traced(pipe, call, edit=None, modules=None, per_step=2):
    calls = Calls(pipe.transformer, modules, per_step) if modules else None
    try:
        with fg.trace(pipe, record=_record(), edit=edit) as run:
            frames = call(pipe)
    finally:
        if calls:
            calls.remove()
    return frames, run.dataset, calls


def _wan_text_modules(n=4):
    return {f"blocks.{i}": f"blocks.{i}.attn2" for i in range(n)}


def test_first_block_cache_skipped_layers_are_nan_and_flagged_never_stale():
    base = testing.tiny_wan_i2v_pipeline()
    _, clean, _ = _traced(base, _wan_call)
    pipe = testing.tiny_wan_i2v_pipeline()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # skips every tail block it can
    plain = _wan_call(pipe)
    frames, ds, calls = _traced(pipe, _wan_call, modules=_wan_text_modules())
    assert torch.equal(frames, plain)  # recording does not change what the cache does
    layers = list(ds.layer.values)
    for branch in ("cond", "uncond"):
        expected = calls.not_run(layers, branch)
        assert expected[1:].any() and not expected[0].any()  # the cache did skip, after a full first step
        flags = ds.skipped.sel(branch=branch).values
        np.testing.assert_array_equal(flags, expected)
    cond = ds.word_mass.sel(branch="cond")
    np.testing.assert_array_equal(cond.isnull().any(["word", "frame"]).values, ds.skipped.sel(branch="cond").values)
    # where it ran, the value is the model's: step 0 (nothing skipped) equals the run without a cache
    np.testing.assert_array_equal(cond.isel(step=0).values, clean.word_mass.sel(branch="cond").isel(step=0).values)
    attrs = fg.store.decode_attrs(ds.attrs)
    assert attrs["step_cache"] == ["FirstBlockCacheConfig"]
    assert attrs["layers_skipped"] == int(ds.skipped.sum())
    assert attrs["edits_skipped"] == []


def test_a_cache_that_skips_every_block_keeps_every_step():
    pipe = testing.tiny_wan_i2v_pipeline()
    pipe.transformer.enable_cache(MagCacheConfig(threshold=10.0, num_inference_steps=STEPS, retention_ratio=0.0,
                                                 mag_ratios=np.ones(STEPS)))
    _, ds, calls = _traced(pipe, _wan_call, modules=_wan_text_modules())
    assert ds.attrs["complete"] and ds.attrs["steps_written"] == STEPS and list(ds.step.values) == [0, 1, 2, 3]
    np.testing.assert_array_equal(ds.skipped.sel(branch="cond").values, calls.not_run(list(ds.layer.values), "cond"))
    assert ds.skipped.isel(step=slice(1, None)).all()  # MagCache skipped the head block too
    assert ds.word_mass.sel(branch="cond").isel(step=slice(1, None)).isnull().all()


def test_wan22_second_expert_layers_are_not_flagged_when_the_first_expert_runs():
    pipe = testing.tiny_wan22_i2v_pipeline()
    for t in (pipe.transformer, pipe.transformer_2):
        t.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    with fg.trace(pipe, record=_record()) as run:
        _wan_call(pipe)
    ds = run.dataset
    experts = [str(x).startswith("transformer_2.") for x in ds.layer.values]
    # each step ran one expert: its other layers are NaN (not its forward) but never flagged as skipped
    for s in range(STEPS):
        ran = ds.word_mass.sel(branch="cond").isel(step=s).notnull().any(["word", "frame"]).values
        expert = experts[int(np.flatnonzero(ran)[0])]
        other = [i for i, e in enumerate(experts) if e != expert]
        assert not ds.skipped.sel(branch="cond").isel(step=s, layer=other).any()
    assert ds.skipped.any()


def test_pyramid_attention_broadcast_on_joint_attention_is_flagged():
    pipe = testing.tiny_hunyuan_i2v_pipeline()
    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 10_000),
        current_timestep_callback=lambda: pipe.current_timestep))
    adapter = fg.adapters.adapter_for(pipe.transformer)
    modules = {s.layer: s.module for s in adapter.sites()}
    plain = _hunyuan_call(pipe)
    frames, ds, calls = _traced(pipe, _hunyuan_call, modules=modules, per_step=1)
    assert torch.equal(frames, plain)
    layers = list(ds.layer.values)
    expected = calls.not_run(layers, "cond")
    assert expected.any()
    np.testing.assert_array_equal(ds.skipped.sel(branch="cond").values, expected)
    assert (ds.word_mass.sel(branch="cond").isnull().any(["word", "frame"]).values == expected).all()


def test_taylorseer_predicted_attention_is_flagged():
    pipe = testing.tiny_wan_i2v_pipeline()
    pipe.transformer.enable_cache(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                        cache_identifiers=[r"blocks\.\d+\.attn2"]))
    _, ds, calls = _traced(pipe, _wan_call, modules=_wan_text_modules())
    # TaylorSeer counts its own calls as steps (both CFG forwards), so compare forward by forward
    flags = np.stack([ds.skipped.sel(branch=b).values for b in ("cond", "uncond")], 1).reshape(2 * STEPS, -1)
    expected = np.array([[name not in f for name in ds.layer.values] for f in calls.forwards])
    assert expected.any()
    np.testing.assert_array_equal(flags, expected)


def test_an_edit_due_at_a_skipped_layer_is_reported():
    pipe = testing.tiny_wan_i2v_pipeline()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    edit = fg.Scale(["dog"], 4.0, where=fg.Where(layers=["blocks.2"]))
    with pytest.warns(RuntimeWarning, match=r"skipped layers where the edit was due \(blocks.2"):
        _, ds, _ = _traced(pipe, _wan_call, edit=edit)
    due = fg.store.decode_attrs(ds.attrs)["edits_skipped"]
    skipped_steps = sorted({int(s) for s in ds.step.values if ds.skipped.sel(step=s, layer="blocks.2").any()})
    assert sorted({e["step"] for e in due}) == skipped_steps and all(e["layers"] == ["blocks.2"] for e in due)


@pytest.mark.parametrize("build", ["wan_i2v", "wan_t2v", "wan22_i2v", "hunyuan_i2v", "cogvideox"])
def test_without_a_cache_nothing_is_flagged_or_warned(build):
    pipe = getattr(testing, f"tiny_{build}_pipeline")()
    if build == "cogvideox":
        kwargs = dict(prompt=testing.TINY_PROMPT, height=48, width=80, num_frames=9, output_type="latent")
    else:
        kwargs = testing.tiny_call_kwargs("hunyuan" if build.startswith("hunyuan") else "wan", steps=2)
        if build == "wan_t2v":
            kwargs.pop("image")
    kwargs.update(num_inference_steps=2, guidance_scale=3.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*did not run.*")
        with fg.trace(pipe, record=fg.Record(words=["dog"], branches=("cond", "uncond"))) as run:
            pipe(**kwargs)
    ds = run.dataset
    assert "skipped" not in ds and "layers_skipped" not in ds.attrs and "step_cache" not in ds.attrs


def test_a_skip_without_a_known_cache_warns_and_leaves_nan():
    pipe = testing.tiny_wan_i2v_pipeline()
    attn = pipe.transformer.blocks[2].attn2
    attn.forward = lambda hidden_states, *a, **k: torch.zeros_like(hidden_states)  # a hook that skips the call
    try:
        with pytest.warns(RuntimeWarning, match="did not run"):
            with fg.trace(pipe, record=_record()) as run:
                _wan_call(pipe)
    finally:
        del attn.forward
    ds = run.dataset
    assert "skipped" not in ds and ds.attrs["layers_skipped"] == 2 * STEPS
    assert ds.word_mass.sel(layer="blocks.2", branch="cond").isnull().all()
    assert ds.word_mass.sel(layer="blocks.1", branch="cond").notnull().all()


def test_open_runs_flags_only_the_cached_run(tmp_path):
    store = os.fspath(tmp_path / "runs.zarr")
    pipe = testing.tiny_wan_i2v_pipeline()
    with fg.trace(pipe, record=_record(), store=store):
        _wan_call(pipe)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    with fg.trace(pipe, record=_record(), store=store) as run:
        _wan_call(pipe)
    cached = run.run_ids[0]
    runs = fg.open_runs(store)
    assert runs.skipped.dtype == bool
    assert not runs.skipped.sel(run=[r for r in runs.run.values if r != cached]).any()
    np.testing.assert_array_equal(runs.skipped.sel(run=cached).values, fg.open_run(store, run=cached).skipped.values)
    assert fg.store.verify_run(store, cached).ok
