"""Recording on Wan: exactness against a float64 dense reference, bit-identical outputs, clean restore."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_wan
from reference import morans_i

import fglens as fg
from fglens.trace.record import STATS

PROMPT = "a dog jumps over the red fence"
HEIGHT, WIDTH, FRAMES = 48, 80, 9  # latent grid (3, 3, 5): non-square, several frames


def _call(pipe, image, steps=2, seed=0, **kw):
    kw.setdefault("output_type", "np")
    return pipe(
        image=image, prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed), **kw,
    ).frames[0]


# -- an independent float64 reference ------------------------------------------------------------------------
class Capture:
    """Plain torch hooks on the projections/norms of every block: the queries, keys and values the model
    itself computed, per transformer forward, without going through fglens."""

    def __init__(self, transformer):
        self.forwards: list[dict[int, dict[str, torch.Tensor]]] = []
        self.handles = [transformer.register_forward_pre_hook(lambda m, a: self.forwards.append({}))]
        for i, block in enumerate(transformer.blocks):
            self._out(block.attn2.norm_q, i, "q")
            self._out(block.attn2.norm_k, i, "k")
            self._out(block.attn2.to_v, i, "v")
            self._out(block.attn2.norm_added_k, i, "k_img")
            self._out(block.attn2.add_v_proj, i, "v_img")
            self._out(block.attn1.norm_q, i, "q_self")
            self._out(block.attn1.norm_k, i, "k_self")
            self.handles.append(block.attn1.register_forward_pre_hook(self._rope(i)))

    def _out(self, module, i, name):
        def hook(m, a, out):
            self.forwards[-1].setdefault(i, {})[name] = out.detach().clone()

        self.handles.append(module.register_forward_hook(hook))

    def _rope(self, i):
        def hook(m, args):
            self.forwards[-1].setdefault(i, {})["rope"] = args[3]

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _rotary(x, cos, sin):
    # diffusers' WanAttnProcessor rotary embedding, in float64
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2].double(), sin[..., 1::2].double()
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out


def _softmax64(q, k):
    d = q.shape[-1]
    return torch.softmax(torch.einsum("bnhd,bthd->bhnt", q, k) / math.sqrt(d), dim=-1)


def dense_reference(cap: dict[str, torch.Tensor], heads: int, words: dict[str, list[int]], grid) -> dict:
    f, ny, nx = grid
    h = heads
    q = cap["q"].double().unflatten(-1, (h, -1))
    k = cap["k"].double().unflatten(-1, (h, -1))
    v = cap["v"].double().unflatten(-1, (h, -1))
    p = _softmax64(q, k)  # [B, H, N, 512]: the full text softmax
    pbar = p.mean(1)
    out = {}
    wm, mi, sim, sim_map, sim_mi = [], [], [], [], []
    for positions in words.values():
        m = pbar[0][:, positions].sum(-1)  # [N]
        frames = m.reshape(f, ny * nx)
        wm.append(frames.mean(-1).numpy())
        mi.append([morans_i(frames[i].reshape(ny, nx).numpy()) for i in range(f)])
        kbar = k[0][positions].flatten(1).mean(0)
        s = torch.nn.functional.cosine_similarity(q[0].flatten(1), kbar[None], dim=-1)
        sim.append(s.reshape(f, -1).mean(-1).numpy())
        sim_map.append(s.reshape(f, ny, nx).numpy())
        sim_mi.append([morans_i(sim_map[-1][i]) for i in range(f)])
    out["word_mass"], out["morans_i"], out["similarity"] = np.array(wm), np.array(mi), np.array(sim)
    out["similarity_map"], out["similarity_morans_i"] = np.array(sim_map), np.array(sim_mi)
    ent = -(pbar[0] * torch.log(pbar[0])).sum(-1) / math.log(k.shape[1])
    out["entropy"] = ent.reshape(f, -1).mean(-1).numpy()
    o_text = torch.einsum("bhnt,bthd->bnhd", p, v).flatten(2)[0]
    # the text output at each token against the word's mean value
    resp = [torch.nn.functional.cosine_similarity(o_text, v[0][pos].flatten(1).mean(0)[None], dim=-1)
            .reshape(f, ny, nx) for pos in words.values()]
    out["response"] = np.stack([r.reshape(f, -1).mean(-1).numpy() for r in resp])
    out["response_morans_i"] = np.array([[morans_i(r[i].numpy()) for i in range(f)] for r in resp])
    out["response_map"] = np.stack([r.numpy() for r in resp])
    k_img = cap["k_img"].double().unflatten(-1, (h, -1))
    v_img = cap["v_img"].double().unflatten(-1, (h, -1))
    o_img = torch.einsum("bhnt,bthd->bnhd", _softmax64(q, k_img), v_img).flatten(2)[0]
    share = o_text.norm(dim=-1) / (o_text.norm(dim=-1) + o_img.norm(dim=-1))
    out["text_share"] = share.reshape(f, -1).mean(-1).numpy()
    cos, sin = cap["rope"]
    qs = _rotary(cap["q_self"].double().unflatten(-1, (h, -1)), cos, sin)
    ks = _rotary(cap["k_self"].double().unflatten(-1, (h, -1)), cos, sin)
    ps = _softmax64(qs, ks)  # [B, H, N, N]
    ref = ps[0][..., : ny * nx].sum(-1).mean(0)
    out["ref_mass"] = ref.reshape(f, -1).mean(-1).numpy()
    out["word_map"] = np.stack([pbar[0][:, pos].sum(-1).reshape(f, ny, nx).numpy() for pos in words.values()])
    return out


def test_recorded_statistics_equal_float64_dense_reference(wan_i2v, ref_image):
    _check_against_dense_reference(wan_i2v, ref_image)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the bfloat16 tensor-core path of qk_dots")
def test_cuda_bfloat16_statistics_equal_float64_reference_from_the_same_qk(ref_image):
    # the model's own bf16 q/k, upcast to float64 by the reference: fglens' float32 statistics from them (tensor-core
    # GEMM with float32 output) agree to float32 precision; response and text share are cosines/norms of the model's
    # own bf16 kernel outputs, and the reference mass reads keys rotated in float64 where the model rounds them to
    # bf16, so those carry bf16 rounding (2^-8 relative)
    pipe = fg.testing.tiny_wan_i2v_pipeline().to("cuda", torch.bfloat16)
    _check_against_dense_reference(pipe, ref_image, loose={"response": 2e-2, "response_map": 2e-2,
                                                           "response_morans_i": 1e-1, "text_share": 2e-2,
                                                           "ref_mass": 2e-2})


#: statistics read from the model's own half-precision kernel outputs, or keys the model rotates in half precision
#: while the reference rotates them in float64, carry the dtype's rounding (2^-8 relative for bf16)
HALF_LOOSE = {"response": 2e-2, "response_map": 2e-2, "response_morans_i": 1e-1, "text_share": 2e-2, "ref_mass": 2e-2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_pipeline_on_cpu_records_the_float64_reference_of_its_own_qk(ref_image, dtype):
    pipe = fg.testing.tiny_wan_i2v_pipeline().to(dtype=dtype)
    _check_against_dense_reference(pipe, ref_image, loose=HALF_LOOSE)
    plain = _call(pipe, ref_image)
    with fg.trace(pipe, record=fg.Record(words=["dog"])):
        np.testing.assert_array_equal(_call(pipe, ref_image), plain)
    # an edit in half precision is off its float32 self by no more than the dtype's own rounding of the model
    edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=2.0),
                            cache=fg.CacheTransfer(src=["blocks.3"], dst=["blocks.1", "blocks.2"], alpha=0.5),
                            layers=["blocks.1", "blocks.2"], steps=None)
    full = fg.testing.tiny_wan_i2v_pipeline()
    latents = {}
    for name, p in (("half", pipe), ("full", full)):
        latents[name] = _call(p, ref_image, output_type="latent").float()
        with fg.trace(p, edit=edit):
            latents[f"{name} edited"] = _call(p, ref_image, output_type="latent").float()
    model_error = (latents["half"] - latents["full"]).abs().max()  # 0.08 (bf16), 0.012 (fp16) after 2 steps
    assert (latents["half edited"] - latents["half"]).abs().max() > 3 * model_error  # the edit acts: 0.29-0.30
    assert (latents["half edited"] - latents["full edited"]).abs().max() <= 1.5 * model_error


def _check_against_dense_reference(pipe, ref_image, loose=None):
    cap = Capture(pipe.transformer)
    record = fg.Record(words=["dog", "red fence"], stats=list(STATS), layers=[0, 2, 3], branches=("cond", "uncond"),
                       maps=("word_map", "similarity_map", "response_map"))
    try:
        with fg.trace(pipe, record=record) as run:
            # a negative prompt with the same words, so that the uncond word maps are not of pad keys
            # (near-uniform maps, whose Moran's I is ill-conditioned in any float32 computation)
            _call(pipe, ref_image, steps=2, negative_prompt="a dog jumps over the red fence, blurry")
    finally:
        cap.remove()
    ds = run.dataset
    words = fg.store.decode_attrs(ds.attrs)["word_positions"]
    assert words == {"dog": [1], "red fence": [5, 6]}  # ▁a ▁dog ▁jumps ▁over ▁the ▁red ▁fence </s>
    grid = tuple(fg.store.decode_attrs(ds.attrs)["grid"])
    assert grid == (3, 3, 5)
    heads = pipe.transformer.config.num_attention_heads
    assert len(cap.forwards) == 4  # 2 steps x (cond, uncond)
    checked = 0
    for index, forward in enumerate(cap.forwards):
        step, branch = divmod(index, 2)
        branch = ("cond", "uncond")[branch]
        for layer in (0, 2, 3):
            ref = dense_reference({k: v.cpu() for k, v in forward[layer].items() if k != "rope"}
                                  | {"rope": tuple(t.cpu() for t in forward[layer]["rope"])}, heads, words, grid)
            got = ds.sel(step=step, branch=branch, layer=f"blocks.{layer}")
            for var, expected in ref.items():
                # R is the cosine of the model's own float32 kernel output (not recomputed): its map carries that
                # output's rounding, which Moran's I of a near-flat map amplifies (2e-5 seen here)
                atol = 1e-4 if var == "response_morans_i" else 1e-5
                atol = (loose or {}).get(var, atol)
                np.testing.assert_allclose(got[var].values, expected, rtol=1e-5, atol=atol, err_msg=var)
                checked += 1
        # layers not recorded stay absent from the dataset
        assert "blocks.1" not in ds.layer.values
    assert checked == 4 * 3 * 12


def test_the_uncond_branch_reads_each_word_where_the_negative_prompt_has_it(wan_i2v, ref_image):
    """The uncond branch attends to the negative prompt's keys: its statistics of a word are those of the word's
    positions there (float64 reference), and NaN for a word the negative prompt lacks (it read whatever token sat
    at the prompt's position, mostly a pad)."""
    negative = "a red fence, blurry"
    tokens = wan_i2v.tokenizer.convert_ids_to_tokens(wan_i2v.tokenizer(negative).input_ids)
    assert tokens[1:3] == ["\u2581red", "\u2581fence"]
    record = fg.Record(words=["dog", "red fence"], stats=["word_mass", "similarity", "morans_i"], maps=True,
                       layers=[0, 2], branches=("cond", "uncond"))
    cap = Capture(wan_i2v.transformer)
    try:
        with fg.trace(wan_i2v, record=record) as run:
            _call(wan_i2v, ref_image, steps=1, negative_prompt=negative)
    finally:
        cap.remove()
    ds, attrs = run.dataset, fg.store.decode_attrs(run.dataset.attrs)
    assert attrs["word_positions"] == {"dog": [1], "red fence": [5, 6]}
    assert attrs["word_positions_uncond"] == {"dog": [], "red fence": [1, 2]}
    heads, grid = wan_i2v.transformer.config.num_attention_heads, tuple(attrs["grid"])
    for layer in (0, 2):
        got = ds.sel(step=0, layer=f"blocks.{layer}")
        for branch, forward, words in (("cond", 0, attrs["word_positions"]), ("uncond", 1, {"red fence": [1, 2]})):
            ref = dense_reference(cap.forwards[forward][layer], heads, words, grid)
            for var in ("word_mass", "similarity", "morans_i", "word_map"):
                np.testing.assert_allclose(got[var].sel(branch=branch, word=list(words)).values, ref[var],
                                           rtol=1e-5, atol=1e-5, err_msg=f"{branch} {var}")
        for var in ("word_mass", "similarity", "morans_i", "word_map"):
            assert np.isnan(got[var].sel(branch="uncond", word="dog").values).all(), var


def test_word_positions_follow_the_tokens_the_encoder_saw(wan_i2v, ref_image):
    tok = wan_i2v.tokenizer
    pieces = tok.convert_ids_to_tokens(tok(PROMPT).input_ids)
    with fg.trace(wan_i2v, record=fg.Record(words=None, stats=["word_mass"])) as run:
        _call(wan_i2v, ref_image, steps=1)
    positions = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]
    assert list(positions) == ["a", "dog", "jumps", "over", "the", "red", "fence"]
    for word, pos in positions.items():
        assert "".join(pieces[p] for p in pos).lstrip("▁") == word


def test_traced_call_is_bit_identical(wan_i2v, ref_image):
    plain = _call(wan_i2v, ref_image)
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"], stats=list(STATS), maps=True)):
        traced = _call(wan_i2v, ref_image)
    assert np.array_equal(plain, traced)


def model_state(pipe, module=transformer_wan):
    """What fg.trace may touch and must restore: processors, the transformer's and pipeline's attributes, the
    patched `dispatch_attention_fn` of the model's diffusers `module`, hook counts (shared by the models' tests)."""
    t = pipe.transformer
    return (
        {n: m.processor for n, m in t.named_modules() if hasattr(m, "processor")},
        set(t.__dict__),
        set(vars(pipe)),
        module.dispatch_attention_fn,
        len(t._forward_pre_hooks) + len(t._forward_hooks),
        len(pipe.text_encoder._forward_pre_hooks),
    )


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_model_restored_after_interruption(wan_i2v, ref_image, error):
    before_out = _call(wan_i2v, ref_image)
    before = model_state(wan_i2v)

    def boom(pipe, i, t, kwargs):
        if i == 1:
            raise error("stop")
        return kwargs

    with pytest.raises(error):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"])):
            _call(wan_i2v, ref_image, steps=3, callback_on_step_end=boom)
    after = model_state(wan_i2v)
    for b, a in zip(before[0].values(), after[0].values(), strict=True):
        assert a is b  # the original processor objects
    assert before[1:] == after[1:]
    assert np.array_equal(before_out, _call(wan_i2v, ref_image))


def test_restored_when_entering_fails(wan_i2v):
    before = model_state(wan_i2v)
    with pytest.raises(ValueError, match="out of range"):
        with fg.trace(wan_i2v, record=fg.Record(layers=[99])):
            pass
    assert model_state(wan_i2v)[1:] == before[1:]


def test_nested_traces_are_refused_and_the_outer_one_keeps_working(wan_i2v, ref_image):
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"])) as outer:
        with pytest.raises(RuntimeError, match="already being traced"):
            with fg.trace(wan_i2v):
                pass
        _call(wan_i2v, ref_image, steps=1)
    assert outer.dataset.sizes["step"] == 1
    assert not any(type(m.processor).__name__ == "TracedProcessor"
                   for m in wan_i2v.transformer.modules() if hasattr(m, "processor"))


def test_t2v_has_no_image_site_and_no_text_share(wan_t2v):
    sites = fg.adapters.adapter_for(wan_t2v.transformer).sites()
    assert {s.kind for s in sites} == {"self", "text"}
    with fg.trace(wan_t2v, record=fg.Record(words=["dog"])) as run:
        wan_t2v(prompt="a dog runs", height=32, width=48, num_frames=5, num_inference_steps=2, output_type="latent")
    ds = run.dataset
    assert "text_share" not in ds and "word_mass" in ds
    assert np.isfinite(ds.word_mass.values).all()


def test_wan22_traces_both_experts_with_separate_layer_names(wan22, ref_image):
    with fg.trace(wan22, record=fg.Record(words=["dog"])) as run:
        _call(wan22, ref_image, steps=4)
    ds = run.dataset
    layers = list(ds.layer.values)
    assert layers == [f"blocks.{i}" for i in range(3)] + [f"transformer_2.blocks.{i}" for i in range(3)]
    high = ds.word_mass.sel(layer="blocks.0", branch="cond").isnull().all(("word", "frame")).values
    low = ds.word_mass.sel(layer="transformer_2.blocks.0", branch="cond").isnull().all(("word", "frame")).values
    assert (high != low).all() and (~high).any() and (~low).any()  # each step ran exactly one expert
    # the expert switches once, at the boundary, from high-noise to low-noise
    assert list(high) == sorted(high)


def test_bare_transformer_with_token_positions():
    t = fg.testing.tiny_wan_transformer()
    x = torch.randn(1, 36, 2, 4, 6)
    text = torch.randn(1, 512, 32)
    text[:, 7:] = 0  # Wan's zero padding
    image = torch.randn(1, 257, 8)
    with fg.trace(t, record=fg.Record(words={"w": [1, 2]})) as run:
        for ts in (900, 500):
            t(hidden_states=x, timestep=torch.tensor([ts]), encoder_hidden_states=text,
              encoder_hidden_states_image=image)
    ds = run.dataset
    assert list(ds.step.values) == [0, 1]
    assert list(ds.timestep.values) == [900.0, 500.0]
    assert ds.attrs["check_pad_uniform"] is True or ds.attrs["check_pad_uniform"] == 1


def test_branch_rules_without_a_named_context():
    from fglens.trace.clock import ClockHook

    hook = ClockHook(adapter=None, steps=None, on_begin=None, on_end=None, batched_cfg=lambda: True)
    assert hook._branches(4, 0) == ("uncond", "uncond", "cond", "cond")  # batched CFG: diffusers' halves
    hook.batched_cfg = lambda: False
    # sequential CFG: the first forward of a step is cond, a second one uncond
    assert [hook._branches(1, s) for s in (0, 0, 1, 1, 2)] == [("cond",), ("uncond",), ("cond",), ("uncond",),
                                                                 ("cond",)]


# -- clear errors ----------------------------------------------------------------------------------------------
def test_unsupported_model_names_supported_classes():
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        fg.trace(torch.nn.Linear(2, 2))


def test_word_not_in_prompt_lists_the_prompt_words(wan_i2v, ref_image):
    before = model_state(wan_i2v)
    with pytest.raises(ValueError, match=r"'cat' is not in the prompt.*dog, jumps"):
        with fg.trace(wan_i2v, record=fg.Record(words=["cat"])):
            _call(wan_i2v, ref_image, steps=1)
    assert model_state(wan_i2v)[1:] == before[1:]


def test_layer_out_of_range(wan_i2v):
    with pytest.raises(ValueError, match="layer index 7 is out of range.*4 blocks"):
        fg.trace(wan_i2v, record=fg.Record(layers=[7]))
    with pytest.raises(ValueError, match="unknown layer 'blocks.9'"):
        fg.trace(wan_i2v, record=fg.Record(layers=["blocks.9"]))


def test_unknown_statistic_and_branch():
    with pytest.raises(ValueError, match="unknown statistic.*'moran'.*known"):
        fg.Record(stats=["moran"])
    with pytest.raises(ValueError, match="unknown branch"):
        fg.Record(branches=("positive",))


def test_reference_image_is_kept_for_image_to_video_runs_only(wan_i2v, wan_t2v, wan22):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (300, 700, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = np.asarray(image.resize((256, round(300 * 256 / 700)), Image.Resampling.LANCZOS))  # PIL itself
    for pipe in (wan_i2v, wan22):
        with fg.trace(pipe, record=fg.Record(words=["dog"])) as run:
            pipe(image=image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=1,
                 output_type="latent")
        stored = run.dataset.reference_image
        assert stored.dims == ("image_y", "image_x", "channel") and stored.dtype == np.uint8
        assert max(stored.shape[:2]) == 256 and stored.shape == (110, 256, 3)
        np.testing.assert_array_equal(stored.values, expected)
        assert "encode_prompt" not in pipe.__dict__ and "check_inputs" not in pipe.__dict__  # wrappers removed
    with fg.trace(wan_t2v, record=fg.Record(words=["dog"])) as t2v:
        wan_t2v(prompt="a dog runs", height=32, width=48, num_frames=5, num_inference_steps=1, output_type="latent")
    assert "reference_image" not in t2v.dataset and "word_mass" in t2v.dataset
    with fg.trace(wan_i2v.transformer, record=fg.Record(words={"w": [1]})) as bare:  # a bare transformer: no call
        wan_i2v.transformer(hidden_states=torch.randn(1, 36, 2, 4, 6), timestep=torch.tensor([900]),
                            encoder_hidden_states=torch.randn(1, 512, 32),
                            encoder_hidden_states_image=torch.randn(1, 257, 8))
    assert "reference_image" not in bare.dataset and "word_mass" in bare.dataset


def _traced_processors(pipe) -> int:
    return sum(type(m.processor).__name__ == "TracedProcessor" for m in pipe.transformer.modules()
               if hasattr(m, "processor"))


def test_reentering_an_open_trace_is_refused_and_the_block_keeps_recording(wan_i2v, ref_image):
    """`with t: ... with t:` is refused without removing the open block's processors and hooks: its next pipeline
    call is still recorded (issue 12, item 6)."""
    t = fg.trace(wan_i2v, record=fg.Record(words=["dog"]))
    with t:
        installed = _traced_processors(wan_i2v)
        with pytest.raises(RuntimeError, match="already open"):
            with t:
                pass
        assert _traced_processors(wan_i2v) == installed > 0
        _call(wan_i2v, ref_image, steps=2)
    assert t.dataset.sizes["step"] == 2 and t.dataset.attrs["complete"]
    assert np.isfinite(t.dataset.word_mass.values).all()
    assert _traced_processors(wan_i2v) == 0


def test_ctrl_c_stays_a_keyboard_interrupt_with_a_write_error_pending(wan_i2v, ref_image, tmp_path, monkeypatch):
    """A store write error pending when the user presses Ctrl-C: the block is left by the KeyboardInterrupt (which
    `except Exception` does not catch), with the write error chained to it (issue 12, item 7)."""
    from fglens.store.writer import ZarrSink

    def disk_full(self, ds):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ZarrSink, "append", disk_full)  # the first step is flushed at close: the error is pending

    def ctrl_c(pipe, i, t, kwargs):
        raise KeyboardInterrupt

    before = model_state(wan_i2v)
    caught = None
    try:
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=tmp_path / "runs.zarr"):
            try:
                _call(wan_i2v, ref_image, steps=3, callback_on_step_end=ctrl_c)
            except Exception:  # what user code around the call does: must not swallow Ctrl-C
                pytest.fail("the KeyboardInterrupt was caught as an Exception inside the block")
    except Exception as exc:  # noqa: BLE001 - the bug: the interrupt turned into a RuntimeError
        pytest.fail(f"Ctrl-C left the block as {type(exc).__name__}: {exc}")
    except KeyboardInterrupt as exc:
        caught = exc
    assert caught is not None
    assert isinstance(caught.__cause__, RuntimeError) and "No space left" in str(caught.__cause__)
    assert any("could not write" in note for note in caught.__notes__)
    assert model_state(wan_i2v)[1:] == before[1:]
    (run,) = fg.store.list_runs(tmp_path / "runs.zarr")
    assert not fg.open_run(tmp_path / "runs.zarr", run).attrs["complete"]


def test_an_ordinary_error_with_a_write_error_pending_still_reports_the_write_error(wan_i2v, ref_image, tmp_path,
                                                                                    monkeypatch):
    from fglens.store.writer import ZarrSink

    monkeypatch.setattr(ZarrSink, "append", lambda self, ds: (_ for _ in ()).throw(OSError(28, "disk full")))

    def boom(pipe, i, t, kwargs):
        raise ValueError("user error")

    with pytest.raises(RuntimeError, match="could not write") as info:
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=tmp_path / "runs.zarr"):
            _call(wan_i2v, ref_image, steps=3, callback_on_step_end=boom)
    assert isinstance(info.value.__context__, ValueError)


@pytest.mark.parametrize("words, fragment", [
    ([3], "got 3"), (["dog", None], "got None"), ([""], "got ''"), ({"w": "12"}, "'w': '12'"),
    ({"w": [-1]}, "'w': [-1]"),
])
def test_record_words_of_the_wrong_type_get_one_clear_sentence(words, fragment):
    with pytest.raises(ValueError, match="Record words") as info:
        fg.Record(words=words)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_record_steps_out_of_the_schedule_are_refused_before_sampling(wan_i2v, ref_image, tmp_path):
    """Record(steps=[99]) on a 2-step schedule: refused at the first forward, no 0-step run marked complete."""
    with pytest.raises(ValueError, match=r"Record steps 99 out of range: this run's schedule has 2 steps \(indices "
                                         r"0\.\.1\)"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"], steps=[1, 99]), store=tmp_path / "runs.zarr"):
            _call(wan_i2v, ref_image, steps=2)
    assert not (tmp_path / "runs.zarr").exists() or fg.store.list_runs(tmp_path / "runs.zarr") == []
    with pytest.raises(ValueError, match="Record steps takes step indices counted from 0; got -1"):
        fg.Record(steps=[-1])
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"], steps=[1])) as run:
        _call(wan_i2v, ref_image, steps=2)
    assert list(run.dataset.step.values) == [1]


def test_a_word_cut_off_by_the_token_limit_is_named_as_truncated(wan_i2v, ref_image):
    """A word past the encoder's 512-token limit: one short sentence saying the prompt was truncated (it was a
    2.4 kB list of every word that never said so)."""
    prompt = " ".join(["dog"] * 600) + " zebra"
    with pytest.raises(ValueError) as info:
        with fg.trace(wan_i2v, record=fg.Record(words=["zebra"])):
            wan_i2v(image=ref_image, prompt=prompt, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                    num_inference_steps=1, output_type="latent")
    message = str(info.value)
    assert "'zebra' is in the prompt but past the text encoder's limit" in message and "truncated" in message
    assert len(message) < 300 and "\n" not in message
    long = " ".join(f"w{i}" for i in range(100))
    with pytest.raises(ValueError) as info:
        with fg.trace(wan_i2v, record=fg.Record(words=["zebra"])):
            wan_i2v(image=ref_image, prompt=long, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                    num_inference_steps=1, output_type="latent")
    message = str(info.value)
    assert "'zebra' is not in the prompt" in message and "(60 more)" in message and len(message) < 700


def _each_alone(pipe, prompts, record=None, edit=None, negatives=None, **kwargs):
    """Each prompt in its own call, seeded as batch item k of a call given generators [0, 1, ...] is."""
    runs, frames = [], []
    for k, prompt in enumerate(prompts):
        neg = {} if negatives is None else {"negative_prompt": negatives[k]}
        with fg.trace(pipe, record=record, edit=edit) as run:
            out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(k), **neg, **kwargs).frames
        runs.append(run.dataset if record is not None else None)
        frames.append(out[0])
    return runs, frames


def test_a_list_of_prompts_records_one_run_per_item_each_as_if_called_alone(wan_i2v, ref_image, tmp_path):
    """Issue 12, item 1: pipe(prompt=[dog prompt, cat prompt]) with Record(words=["jumps"]) once stored the mean of
    the two items, with prompt 0's word positions for both. Now each batch item is its own run, its words located
    in its own prompt (and negative prompt), equal to the run of that prompt called alone with the same noise."""
    prompts = ["a dog jumps over the red fence", "a big brown cat jumps over it"]
    negatives = ["blurry", "static jumps"]
    kwargs = dict(image=ref_image, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=2,
                  output_type="latent")
    record = fg.Record(words=["jumps", "over"], stats=["word_mass", "similarity", "entropy", "text_share"])
    store = tmp_path / "runs.zarr"
    with fg.trace(wan_i2v, record=record, store=store) as run:
        wan_i2v(prompt=prompts, negative_prompt=negatives,
                generator=[torch.Generator().manual_seed(k) for k in range(2)], **kwargs)
    assert len(run.run_ids) == 2 and all(r.endswith((".item0", ".item1")) for r in run.run_ids)
    alone, _ = _each_alone(wan_i2v, prompts, record=record, negatives=negatives, **kwargs)
    for k, (together, single) in enumerate(zip(run.datasets, alone, strict=True)):
        assert together.attrs["prompt"] == prompts[k] and together.attrs["negative_prompt"] == negatives[k]
        assert together.attrs["batch_item"] == k and together.attrs["batch_items"] == 2 and together.attrs["seed"] == k
        assert json.loads(together.attrs["word_positions"]) == json.loads(single.attrs["word_positions"])
        for var in ("word_mass", "similarity", "entropy", "text_share"):
            np.testing.assert_allclose(together[var].values, single[var].values, rtol=1e-4, atol=1e-6, err_msg=var)
    # the two prompts place the words differently, so a shared position would have been wrong for one of them
    positions = [json.loads(ds.attrs["word_positions"])["jumps"] for ds in run.datasets]
    assert positions[0] != positions[1]
    assert json.loads(run.datasets[1].attrs["word_positions_uncond"])["jumps"]  # item 1's negative has it
    assert json.loads(run.datasets[0].attrs["word_positions_uncond"])["jumps"] == []  # "blurry" lacks it
    assert sorted(fg.store.list_runs(store)) == sorted(run.run_ids)


def test_a_word_missing_from_one_prompt_of_a_list_is_refused_before_sampling(wan_i2v, ref_image, tmp_path):
    kwargs = dict(image=ref_image, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1,
                  output_type="latent")
    prompts = ["a dog jumps over the red fence", "a cat jumps over the red fence"]
    store = tmp_path / "runs.zarr"
    with pytest.raises(ValueError, match=r"word 'dog' is not in the prompt 'a cat jumps over the red fence'"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store):
            wan_i2v(prompt=prompts, **kwargs)
    assert not store.exists() or fg.store.list_runs(store) == []  # no run of the call was created
    anchor = fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=2.0)
    with pytest.raises(ValueError, match=r"word 'dog' is not in the prompt 'a cat jumps"):
        with fg.trace(wan_i2v, edit=anchor):
            wan_i2v(prompt=prompts, **kwargs)


def test_an_edit_on_a_list_of_prompts_reads_each_items_words(wan_i2v, ref_image):
    """An anchor on "jumps" over a batch of two prompts that place it differently: each item's output equals that
    prompt's output called alone, so the edit read each item's own positions (and each negative prompt's)."""
    prompts = ["a dog jumps over the red fence", "a big brown cat jumps over it"]
    negatives = ["jumps blurry", "static"]
    kwargs = dict(image=ref_image, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=2,
                  output_type="latent")
    anchor = fg.AnchorMask.from_mask(torch.ones(3, 5), "jumps", strength=4.0)
    with fg.trace(wan_i2v, edit=anchor):
        together = wan_i2v(prompt=prompts, negative_prompt=negatives,
                           generator=[torch.Generator().manual_seed(k) for k in range(2)], **kwargs).frames
    _, alone = _each_alone(wan_i2v, prompts, edit=anchor, negatives=negatives, **kwargs)
    _, plain = _each_alone(wan_i2v, prompts, negatives=negatives, **kwargs)
    for k in range(2):
        torch.testing.assert_close(together[k], alone[k], rtol=1e-4, atol=1e-5)
        assert (together[k] - plain[k]).abs().max() > 1e-3  # the edit did something to each item



@pytest.mark.parametrize("how, fragment", [
    ("whole", "compiled with .compile()"),
    ("regional", "4 of its blocks are compiled (e.g. blocks.0"),
    ("wrapped", "torch.compile wrapper"),
])
def test_a_compiled_transformer_is_refused_before_any_hook(how, fragment):
    # docs/compatibility.md: under torch.compile the traced frames differ from the compiled plain run's
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    processors = [type(m.processor) for m in pipe.transformer.modules() if hasattr(m, "processor")]
    if how == "whole":
        pipe.transformer.compile()
    elif how == "regional":
        pipe.transformer.compile_repeated_blocks(fullgraph=False)
    else:
        pipe.transformer = torch.compile(pipe.transformer)
    with pytest.raises(ValueError, match="does not trace a torch.compile'd model") as info:
        fg.trace(pipe, record=fg.Record(words=["dog"]))
    assert fragment in str(info.value)
    inner = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    assert [type(m.processor) for m in inner.modules() if hasattr(m, "processor")] == processors
