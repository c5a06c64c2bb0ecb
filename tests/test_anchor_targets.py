"""AnchorMask targets (issue 15 item 4): text, outside, image and reference, each alone and composed, exact against
float64 dense attention on Wan (separate text, image and self calls) and HunyuanVideo (one joint softmax)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_hunyuan_video as hv
from diffusers.models.transformers import transformer_wan as tw

import fglens as fg
from fglens.adapters.base import ImageGrid

PROMPT = "a dog jumps over the red fence"
GRID = (3, 3, 5)  # 48 x 80 px, 9 frames
N = math.prod(GRID)
PER_FRAME = GRID[1] * GRID[2]
MASK = torch.zeros(3, 5)
MASK[1:, 1:4] = 1.0
MASK[0, 2] = 0.5


class Calls:
    def __init__(self, module):
        self.module, self.calls = module, []

    def __enter__(self):
        self.inner = self.module.dispatch_attention_fn

        def recording(query, key, value, attn_mask=None, *args, **kwargs):
            out = self.inner(query, key, value, attn_mask, *args, **kwargs)
            self.calls.append({"q": query.clone(), "k": key.clone(), "v": value.clone(), "out": out.clone(),
                               "mask": attn_mask})
            return out

        self.module.dispatch_attention_fn = recording
        return self

    def __exit__(self, *exc):
        self.module.dispatch_attention_fn = self.inner


def _dense(call, bias):
    q, k, v = call["q"].double(), call["k"].double(), call["v"].double()
    logits = torch.einsum("bnhd,bthd->bhnt", q, k) / math.sqrt(q.shape[-1])
    if call["mask"] is not None:
        keep = call["mask"].reshape(q.shape[0], -1)
        logits = logits.masked_fill(~keep[:, None, None, :], -math.inf)
    p = torch.softmax(logits + bias, -1)
    return torch.einsum("bhnt,bthd->bnhd", p, v)


def _area(m: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Exact area average of `m` onto a rows x cols raster (fractional overlaps), float64."""
    def weights(n_in: int, n_out: int) -> np.ndarray:
        w = np.zeros((n_out, n_in))
        for o in range(n_out):
            a, b = o * n_in / n_out, (o + 1) * n_in / n_out
            for i in range(n_in):
                w[o, i] = max(0.0, min(b, i + 1) - max(a, i))
        return w / w.sum(1, keepdims=True)
    return weights(m.shape[0], rows) @ m @ weights(m.shape[1], cols).T


def _image_keys(rows: int, cols: int, first: int, stride: int, n: int) -> torch.Tensor:
    """The mask seen by the image encoder: the centre 3 x 3 of the 3 x 5 grid, area-averaged to its raster."""
    cells = _area(MASK.double().numpy()[:, 1:4], rows, cols).reshape(-1)
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n - first):
        if i * stride < cells.size:
            out[first + i] = cells[i * stride]
    return out


def test_image_grid_token_masks_cut_the_centre_square_and_average_cells():
    got = ImageGrid(16, 16, first=1).token_masks(MASK[None], 257)[0].double()
    torch.testing.assert_close(got, _image_keys(16, 16, 1, 1, 257), rtol=0, atol=1e-6)
    whole = ImageGrid(2, 2, crop=False).token_masks(torch.ones(1, 3, 5), 4)
    torch.testing.assert_close(whole, torch.ones(1, 4))


@pytest.fixture(scope="module")
def hunyuan():
    return fg.testing.tiny_hunyuan_i2v_pipeline()


def test_wan_each_target_biases_its_own_call_exactly(wan_i2v, ref_image):
    lam, weights = 2.5, {"text": 1.0, "outside": 0.6, "image": 1.4, "reference": 0.8}
    anchor = fg.AnchorMask.from_mask(MASK, "dog", strength=lam, frames=0.7, targets=weights,
                                     where=fg.Where(layers=[1], branches=("cond",)))
    with fg.trace(wan_i2v, edit=anchor), Calls(tw) as rec:
        wan_i2v(image=ref_image, prompt=PROMPT, height=48, width=80, num_frames=9, num_inference_steps=1,
                generator=torch.Generator().manual_seed(0), output_type="latent")
    per_block = 3  # self, image, text
    block = rec.calls[per_block : 2 * per_block]  # cond forward, block 1
    self_call, image_call, text_call = block
    assert self_call["k"].shape[1] == N and image_call["k"].shape[1] == 257 and text_call["k"].shape[1] == 512
    fw = torch.tensor([0.7**f for f in range(GRID[0])], dtype=torch.float64)
    m = MASK.double()
    rows_in = (fw[:, None, None] * m).reshape(-1)  # M_w[n]
    rows_out = (fw[:, None, None] * (1 - m)).reshape(-1)
    dog = torch.zeros(512, dtype=torch.float64)
    dog[1] = 1.0
    text_bias = lam * (weights["text"] * rows_in[:, None] - weights["outside"] * rows_out[:, None]) * dog[None]
    image_bias = lam * weights["image"] * rows_in[:, None] * _image_keys(16, 16, 1, 1, 257)[None]
    ref_keys = torch.zeros(N, dtype=torch.float64)
    ref_keys[:PER_FRAME] = m.reshape(-1)
    self_bias = lam * weights["reference"] * rows_in[:, None] * ref_keys[None]
    for call, bias in ((text_call, text_bias), (image_call, image_bias), (self_call, self_bias)):
        torch.testing.assert_close(call["out"].double(), _dense(call, bias), rtol=1e-5, atol=1e-5)
    # other blocks and the uncond branch: the model's own calls
    plain = rec.calls[0]
    torch.testing.assert_close(plain["out"].double(), _dense(plain, 0.0), rtol=1e-5, atol=1e-5)


def test_joint_attention_takes_all_four_targets_in_one_softmax(hunyuan):
    lam, weights = 2.0, {"text": 1.0, "outside": 0.5, "image": 1.2, "reference": 0.7}
    anchor = fg.AnchorMask.from_mask(MASK, "dog", strength=lam, targets=weights,
                                     where=fg.Where(layers=["single.0"]))
    with fg.trace(hunyuan, edit=anchor), Calls(hv) as rec:
        hunyuan(image=fg.testing.reference_image(), prompt=PROMPT, height=48, width=80, num_frames=9,
                num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent")
    call = rec.calls[2]  # double.0, double.1, single.0, single.1
    s = call["k"].shape[1]
    n_image = 144  # 576 LLaVA image positions, every 4th kept (token_replace)
    m = MASK.double()
    rows_in = m.expand(GRID[0], -1, -1).reshape(-1)
    rows_out = (1 - m).expand(GRID[0], -1, -1).reshape(-1)
    dog = N + n_image + 1
    bias = torch.zeros(s, s, dtype=torch.float64)
    bias[:N, dog] = lam * (weights["text"] * rows_in - weights["outside"] * rows_out)
    bias[:N, N : N + n_image] = lam * weights["image"] * rows_in[:, None] * _image_keys(24, 24, 0, 4, n_image)[None]
    bias[:N, :PER_FRAME] = lam * weights["reference"] * rows_in[:, None] * m.reshape(-1)[None]
    torch.testing.assert_close(call["out"].double(), _dense(call, bias), rtol=1e-5, atol=1e-5)


def test_targets_are_checked_and_stored():
    with pytest.raises(ValueError, match="AnchorMask targets are some of"):
        fg.AnchorMask.from_mask(MASK, "dog", targets=["text", "video"])
    with pytest.raises(ValueError, match="weight of target 'image'"):
        fg.AnchorMask.from_mask(MASK, "dog", targets={"image": float("nan")})
    anchor = fg.AnchorMask.from_mask(MASK, "dog", strength=2.0, targets=["text", "reference"])
    assert anchor.spec()["targets"] == {"text": 1.0, "reference": 1.0}
    rebuilt = fg.intervention_from_spec(anchor.spec())
    assert rebuilt.targets == anchor.targets and rebuilt.kinds == {"text", "joint", "self"}


def test_an_image_target_without_image_tokens_is_refused_before_sampling():
    pipe = fg.testing.tiny_wan_t2v_pipeline()
    anchor = fg.AnchorMask.from_mask(MASK, "dog", targets=["image"])
    with pytest.raises(ValueError, match="target 'image' acts at image or joint attention sites"):
        with fg.trace(pipe, edit=anchor):
            pass


def test_joint_anchors_with_the_whole_call_in_scope_never_widen_the_fused_call(hunyuan, monkeypatch):
    """Issue 15 item 8: on joint attention a bias over the whole call is computed on its few key columns and merged
    through the row log-sum-exp (`fglens.trace.split`), never by widening the [S, S] kernel call (`augment`)."""
    import importlib

    editing = importlib.import_module("fglens.trace.editing")

    def widened(*args, **kwargs):
        raise AssertionError("the joint call was widened by bias dimensions")

    monkeypatch.setattr(editing, "augment", widened)
    anchor = fg.AnchorMask.from_mask(MASK, "dog", strength=2.0, targets=["text", "image", "reference"])
    with fg.trace(hunyuan, edit=anchor + fg.Scale("fence", 0.5)), Calls(hv) as rec:
        hunyuan(image=fg.testing.reference_image(), prompt=PROMPT, height=48, width=80, num_frames=9,
                num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert len(rec.calls) == 4


def test_cogvideox_text_first_joint_call_with_both_cfg_halves_matches_the_dense_reference():
    """CogVideoX: [text | video] keys, CFG batched; anchor text + reference targets over both halves (the split
    path: the text and the first frame are one prefix of the keys)."""
    from diffusers.models import attention_processor as ap

    pipe = fg.testing.tiny_cogvideox_pipeline(num_layers=2)
    anchor = fg.AnchorMask.from_mask(MASK, "dog", strength=2.0, targets=["text", "reference"],
                                     where=fg.Where(layers=[1], branches=("uncond", "cond")))
    calls = []
    with fg.trace(pipe, edit=anchor):
        inner = ap.F

        class Recording:
            def __getattr__(self, name):
                return getattr(inner, name)

            def scaled_dot_product_attention(self, q, k, v, *args, **kwargs):
                out = inner.scaled_dot_product_attention(q, k, v, *args, **kwargs)
                calls.append({"q": q.transpose(1, 2).clone(), "k": k.transpose(1, 2).clone(),
                              "v": v.transpose(1, 2).clone(), "out": out.transpose(1, 2).clone(), "mask": None})
                return out

        ap.F = Recording()
        try:
            pipe(prompt=PROMPT, negative_prompt="a cat", height=48, width=80, num_frames=9, num_inference_steps=1,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
        finally:
            ap.F = inner
    call = calls[1]  # block 1 of the one forward (uncond and cond in one batch)
    n_text = call["k"].shape[1] - N
    s = call["k"].shape[1]
    m = MASK.double()
    rows = m.expand(GRID[0], -1, -1).reshape(-1)
    bias = torch.zeros(2, 1, s, s, dtype=torch.float64)
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(PROMPT).input_ids)
    dog = tokens.index("\u2581dog")
    bias[1, 0, n_text:, dog] = 2.0 * rows  # the cond half reads the prompt; the negative prompt has no "dog"
    bias[:, 0, n_text:, n_text : n_text + PER_FRAME] = 2.0 * rows[:, None] * m.reshape(-1)[None]
    torch.testing.assert_close(call["out"].double(), _dense(call, bias), rtol=1e-5, atol=1e-5)
