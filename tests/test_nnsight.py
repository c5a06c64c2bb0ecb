"""nnsight interop: probes read the exact probabilities, nnsight edits equal fglens interventions, clean exit."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from diffusers.models.transformers import transformer_wan as tw

import fglens as fg

nnsight = pytest.importorskip("nnsight")

PROMPT = "a dog jumps over the red fence"
SITE = "blocks.2.cross.text"
N_FORWARDS = 4  # 2 steps x (cond, uncond)


def _kwargs(image, steps=2):
    return dict(image=image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(0), output_type="latent")


class KernelCalls:
    """In front of whatever `dispatch_attention_fn` is (inside a trace: fglens' interceptor): each call's q, k, v
    and the output the model finally gets."""

    def __enter__(self):
        self.inner = tw.dispatch_attention_fn
        self.calls = []

        def recording(query, key, value, *args, **kwargs):
            out = self.inner(query, key, value, *args, **kwargs)
            self.calls.append({"q": query.clone(), "k": key.clone(), "v": value.clone(), "out": out.clone()})
            return out

        tw.dispatch_attention_fn = recording
        return self

    def __exit__(self, *exc):
        tw.dispatch_attention_fn = self.inner

    def text_calls(self, layer, n_layers=4):
        text = [c for c in self.calls if c["k"].shape[1] == 512]
        return text[layer::n_layers]


class Outputs:
    """The transformer's output at each forward."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.values = []

    def __enter__(self):
        hook = lambda m, a, k, out: self.values.append(out[0].detach().clone())  # noqa: E731
        self.handle = self.transformer.register_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _dense_probs(q, k):
    logits = torch.einsum("bnhd,bthd->bhnt", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return torch.softmax(logits, -1)


@pytest.fixture(scope="module")
def wan_i2v():
    # an own pipeline: nnsight leaves its controller on every module it wraps, so the session's is not used
    return fg.testing.tiny_wan_i2v_pipeline()


@pytest.fixture(scope="module")
def model(wan_i2v):
    # wrap before any fg.trace/probes block: fglens' clock hook then sits around nnsight's controller
    return nnsight.NNsight(wan_i2v.transformer)


def test_probe_reads_the_exact_probabilities_across_steps(wan_i2v, ref_image, model):
    plain = wan_i2v(**_kwargs(ref_image)).frames
    with fg.nnsight.probes(wan_i2v, sites=[SITE], words=["dog"]) as probes, KernelCalls() as kernel:
        with model.trace(**_kwargs(ref_image), fn=wan_i2v) as tracer:
            maps = nnsight.save([])
            for _ in tracer.iter[:N_FORWARDS]:
                maps.append(probes.envoy(model, SITE).output.detach().clone())
            dog = nnsight.save(probes.columns("dog"))
            result = tracer.result.save()
    assert dog == [1]
    calls = kernel.text_calls(layer=2)
    assert len(maps) == len(calls) == N_FORWARDS
    for p, call in zip(maps, calls, strict=True):
        assert p.dtype == torch.float32 and p.shape == (1, 2, 12, 512)  # [B, H, N (2 x 2 x 3 latent tokens), T]
        torch.testing.assert_close(p.double(), _dense_probs(call["q"], call["k"]), rtol=1e-5, atol=1e-5)
    assert not torch.equal(maps[0], maps[2])  # a different step, a different map
    assert torch.equal(result.frames, plain)  # reading leaves the model's own kernel output, bit for bit


def test_nnsight_edit_equals_fg_scale(wan_i2v, ref_image, model):
    with Outputs(wan_i2v.transformer) as nn_out, fg.nnsight.probes(wan_i2v, sites=[SITE], words=["dog"]) as probes:
        with model.trace(**_kwargs(ref_image), fn=wan_i2v) as tracer:
            for _ in tracer.iter[:N_FORWARDS]:
                probe = probes.envoy(model, SITE)
                probe.output = fg.nnsight.scale_columns(probe.output, probes.columns("dog"), 2.0)
            edited = tracer.result.save()
    edit = fg.Scale("dog", 2.0, where=fg.Where(layers=[2]))
    with Outputs(wan_i2v.transformer) as fg_out, fg.trace(wan_i2v, edit=edit):
        reference = wan_i2v(**_kwargs(ref_image)).frames
    plain = wan_i2v(**_kwargs(ref_image)).frames
    assert len(nn_out.values) == len(fg_out.values) == N_FORWARDS
    for a, b in zip(nn_out.values, fg_out.values, strict=True):
        # float32: the fg path recomputes scoped rows in their own kernel call, so summation order differs
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(edited.frames, reference, rtol=1e-4, atol=1e-4)
    assert (edited.frames - plain).abs().max() > 1e-3  # the edit did something


def test_in_place_edit_and_bare_transformer(model):
    t = fg.testing.tiny_wan_transformer()
    x = dict(hidden_states=torch.randn(1, 36, 2, 4, 6), timestep=torch.tensor([900]),
             encoder_hidden_states=torch.randn(1, 512, 32), encoder_hidden_states_image=torch.randn(1, 257, 8))
    bare = nnsight.NNsight(t)
    with torch.no_grad():
        plain = t(**x)[0]
        with fg.nnsight.probes(bare, sites=["blocks.1.cross.text"], words={"w": [3, 4]}) as probes:
            with bare.trace(**x):
                p = probes.envoy(bare, "blocks.1.cross.text").output
                p[..., probes.columns("w")] = 0.0  # in place: detected by the tensor's version counter
                p /= p.sum(-1, keepdim=True)
                out = bare.output.save()
        with fg.trace(t, edit=fg.Scale("w", 0.0, where=fg.Where(layers=[1])), record=fg.Record(words={"w": [3, 4]})):
            reference = t(**x)[0]
    torch.testing.assert_close(out[0], reference, rtol=1e-5, atol=1e-5)
    assert not torch.equal(out[0], plain)


def test_model_is_restored_and_errors(wan_i2v, ref_image, model):
    t = wan_i2v.transformer
    processors = {name: m.processor for name, m in t.named_modules() if hasattr(m, "processor")}
    modules = [name for name, _ in t.named_modules()]
    dispatch = tw.dispatch_attention_fn
    with pytest.raises(RuntimeError, match="boom"):
        with fg.nnsight.probes(model, sites=[SITE, "blocks.0.cross.image"]):
            assert "fglens_probes" in t._modules and len(t.fglens_probes) == 2
            raise RuntimeError("boom")
    assert "fglens_probes" not in t._modules
    assert [name for name, _ in t.named_modules()] == modules
    assert all(m.processor is processors[name] for name, m in t.named_modules() if hasattr(m, "processor"))
    assert tw.dispatch_attention_fn is dispatch
    with pytest.raises(ValueError, match="unknown site"):
        fg.nnsight.probes(wan_i2v, sites=["blocks.9.cross.text"])
    with fg.nnsight.probes(wan_i2v, sites=[SITE]) as probes:
        with pytest.raises(RuntimeError, match="do not nest"):
            fg.nnsight.probes(wan_i2v, sites=[SITE]).__enter__()
        with pytest.raises(RuntimeError, match="not resolved"):
            probes.columns("dog")
    assert "fglens_probes" not in t._modules
    # the model still runs under nnsight after the blocks
    with model.trace(**_kwargs(ref_image, steps=1), fn=wan_i2v) as tracer:
        out = tracer.result.save()
    assert torch.equal(out.frames, wan_i2v(**_kwargs(ref_image, steps=1)).frames)


def test_module_doctest():
    result = doctest.testmod(fg.nnsight, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_wrapping_inside_the_block_warns():
    t = fg.testing.tiny_wan_transformer(num_layers=1)
    with pytest.warns(UserWarning, match="before opening the block"):
        with fg.nnsight.probes(t, sites=["blocks.0.cross.text"]):
            nnsight.NNsight(t)
