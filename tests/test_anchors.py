"""fglens.anchors: offline CLIP loading, dense word maps, latent-grid masks (tiny random-weight open_clip)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from fglens import anchors  # noqa: E402
from fglens.anchors import (  # noqa: E402
    DENSE_METHODS,
    AnchorRegions,
    Clip,
    DenseSpec,
    WordMaps,
    latent_grid,
    region_masks,
    threshold,
    tiny_config,
    to_grid,
)
from fglens.anchors.dense import _dense_block  # noqa: E402

YELLOW, BLUE = (250, 200, 20), (30, 60, 200)


@pytest.fixture(scope="module")
def clip() -> Clip:
    torch.manual_seed(0)
    return Clip(tiny_config())


def _two_colour_image(height: int, width: int, box: tuple[int, int, int, int]) -> Image.Image:
    """Blue image with a yellow box (x0, y0, x1, y1), inclusive pixel corners."""
    image = Image.new("RGB", (width, height), BLUE)
    ImageDraw.Draw(image).rectangle(box, fill=YELLOW)
    return image


# ---------------------------------------------------------------------------------------------------------
# shapes on the latent grid
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "grid"), [(48, 80, (3, 5)), (480, 832, (30, 52)), (832, 480, (52, 30))])
@pytest.mark.parametrize("method", ["otsu", "quantile", None])
def test_mask_has_latent_grid_shape_for_non_square_images(clip, height, width, grid, method):
    image = _two_colour_image(height, width, (0, 0, width // 2, height // 3))
    assert latent_grid(height, width) == grid
    regions = region_masks(
        clip,
        image,
        ["dog", "fence"],
        latent_grid(height, width),
        threshold=method,
        prompt="A dog jumps over the fence.",
    )
    assert isinstance(regions, AnchorRegions)
    assert regions.mask.shape == (2, *grid)
    assert regions.soft.shape == regions.grid.shape == (2, *grid)
    assert regions.mask.dtype == torch.float32
    assert 0.0 <= regions.mask.min() and regions.mask.max() <= 1.0
    assert regions["fence"].shape == grid
    assert regions.flat().shape == (2, grid[0] * grid[1])
    assert set(regions.as_dict()) == {"dog", "fence"}
    # the similarity map covers the whole image, undistorted: its aspect matches the image's
    hp, wp = regions.similarity.grid_hw
    assert abs(hp / wp - height / width) < 0.15 * height / width
    assert regions.similarity.image_size == (height, width)


def test_patch_grid_follows_the_aspect_ratio(clip):
    feats = clip.patch_features(Image.new("RGB", (832, 480)))  # short side -> 64 px (8 patches)
    assert feats.shape == (8, 14, 32)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(8, 14), atol=1e-5)
    feats = clip.patch_features(Image.new("RGB", (832, 480)), resolution=(96, 160))
    assert feats.shape == (12, 20, 32)
    padded = clip.word_maps(Image.new("RGB", (80, 48)), ["dog"], fit="pad")
    assert padded.maps.shape == (1, 5, 8)  # 48x80 letterboxed into 64x64 -> 40x64 px of content
    assert padded.clip_size == (40, 64)


# ---------------------------------------------------------------------------------------------------------
# the mask lands where the similarity map is high
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["otsu", "quantile"])
def test_mask_lands_on_the_region_whose_features_match_the_word(clip, monkeypatch, method):
    # 48x80 image, latent grid 3x5 (16 px cells); the yellow box covers latent cells rows 0-1, cols 0-2
    image = _two_colour_image(48, 80, (0, 0, 47, 31))
    region = torch.zeros(3, 5, dtype=torch.bool)
    region[:2, :3] = True
    feats = clip.patch_features(image, resolution=(48, 80))  # 6x10 patches, 2x2 per latent cell
    patch_region = region.repeat_interleave(2, 0).repeat_interleave(2, 1)
    word = F.normalize(feats[patch_region].mean(0), dim=0)

    # the word's text embedding = the mean feature of the box (through the text path of region_masks)
    def fake_text_features(words, templates=None):
        return torch.stack([word if w == "sun" else -word for w in words])

    monkeypatch.setattr(clip, "text_features", fake_text_features)
    regions = region_masks(
        clip,
        image,
        ["sun", "sky"],
        (3, 5),
        threshold=method,
        q=1 - 6 / 15,
        resolution=(48, 80),
        prompt="the sun in the sky",
    )
    assert torch.equal(regions["sun"].bool(), region)
    sky = regions["sky"].bool()
    assert torch.equal(sky, ~region) if method == "otsu" else not (sky & region).any()
    # the similarity map itself is high inside the box and low outside
    sim = regions.similarity["sun"]
    assert sim[patch_region].min() > sim[~patch_region].max()


def test_mask_lands_where_a_constructed_similarity_map_is_high(clip, monkeypatch):
    # patch features e1 inside an off-centre box, e2 elsewhere; the word's embedding is e1
    e1, e2 = torch.eye(32)[0], torch.eye(32)[1]
    feats = e2.repeat(8, 14, 1)
    feats[2:6, 7:12] = e1  # rows 2-5 of 8, cols 7-11 of 14

    monkeypatch.setattr(clip, "_patch_features", lambda image, fit, resolution: (feats, (480, 832), (64, 112)))
    regions = region_masks(clip, Image.new("RGB", (832, 480)), ["dog"], (30, 52), text_features=e1[None])
    sim_grid = to_grid(feats @ e1, (30, 52))
    # Otsu keeps the cells near the high level and drops those near the low one (interpolated borders vary)
    assert regions.mask[0][sim_grid > 0.9].all() and not regions.mask[0][sim_grid < 0.1].any()
    mask = regions.mask[0]
    rows, cols = mask.nonzero().unbind(1)
    # box in grid units: rows 2/8*30..6/8*30 = 7.5..22.5, cols 7/14*52..12/14*52 = 26..44.6
    assert rows.min() >= 7 and rows.max() <= 22 and cols.min() >= 26 and cols.max() <= 44
    assert mask[9:21, 27:44].all() and mask.sum() < 0.2 * mask.numel()


# ---------------------------------------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------------------------------------


def test_otsu_separates_the_modes_of_a_bimodal_map():
    g = torch.Generator().manual_seed(0)
    high = torch.rand(2, 30, 52, generator=g) < 0.3
    maps = torch.where(high, 3.0, 0.0) + 0.2 * torch.randn(2, 30, 52, generator=g)
    mask = threshold(maps, "otsu")
    assert torch.equal(mask.bool(), high)
    # Otsu's threshold lies between the modes and is invariant to an affine change of the map
    t = anchors.otsu(maps)
    assert ((t > 0.8) & (t < 2.2)).all()
    assert torch.equal(threshold(5 * maps - 7, "otsu"), mask)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.8, 0.95, 1.0])
def test_quantile_keeps_the_top_fraction(q):
    maps = torch.randn(3, 30, 52, generator=torch.Generator().manual_seed(1))
    mask = threshold(maps, "quantile", q=q)
    keep = round((1 - q) * 30 * 52)
    assert (mask.sum(dim=(-2, -1)) == keep).all()
    for m, x in zip(mask, maps, strict=True):
        if 0 < keep < m.numel():
            assert x[m.bool()].min() > x[~m.bool()].max()


def test_soft_maps_lie_in_unit_interval():
    maps = 0.3 * torch.randn(4, 9, 13) - 0.1
    soft = threshold(maps, None)
    assert soft.min() >= 0 and soft.max() <= 1
    assert torch.allclose(soft.amin(dim=(-2, -1)), torch.zeros(4))
    assert torch.allclose(soft.amax(dim=(-2, -1)), torch.ones(4))
    # monotone: the order of the cells is kept
    assert torch.equal(soft.flatten(1).argsort(dim=1), maps.flatten(1).argsort(dim=1))


def test_constant_map_gives_an_empty_mask():
    maps = torch.full((1, 4, 6), 0.25)
    for method in ("otsu", "quantile", None):
        assert threshold(maps, method).sum() == 0


def test_threshold_and_grid_errors():
    with pytest.raises(ValueError, match="unknown threshold"):
        threshold(torch.rand(1, 3, 3), "median")
    with pytest.raises(ValueError, match="q must be"):
        threshold(torch.rand(1, 3, 3), "quantile", q=1.5)
    with pytest.raises(ValueError, match="grid_hw"):
        to_grid(torch.rand(1, 3, 3), (0, 4))
    with pytest.raises(ValueError, match="smaller than one latent token"):
        latent_grid(8, 832)


def test_to_grid_keeps_values_and_shape():
    maps = torch.rand(2, 8, 14)
    assert to_grid(maps, (30, 52)).shape == (2, 30, 52)
    assert to_grid(maps[0], (30, 52)).shape == (30, 52)
    assert torch.allclose(to_grid(torch.full((1, 8, 14), 0.7), (3, 5)), torch.full((1, 3, 5), 0.7))
    for mode in ("bilinear", "bicubic", "area", "nearest"):
        out = to_grid(maps, (5, 9), mode=mode)
        assert out.min() >= maps.min() - 1e-6 and out.max() <= maps.max() + 1e-6


# ---------------------------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------------------------


def test_word_not_in_prompt_is_a_clear_error(clip):
    image = Image.new("RGB", (80, 48))
    with pytest.raises(ValueError, match=r"words not in the prompt: \['cat'\]"):
        region_masks(clip, image, ["dog", "cat"], (3, 5), prompt="a dog jumps over a fence")
    with pytest.raises(ValueError, match="not in the prompt"):  # whole words only: "do" is not "dog"
        anchors.check_words(["do"], "a dog")
    assert anchors.check_words(["Dog", "red fence"], "A dog and a RED fence.") == ("Dog", "red fence")
    with pytest.raises(ValueError, match="duplicate"):
        region_masks(clip, image, ["dog", "dog"], (3, 5))
    with pytest.raises(ValueError, match="no words"):
        region_masks(clip, image, [], (3, 5))
    maps = clip.word_maps(image, ["dog"])
    with pytest.raises(KeyError, match="'cat' is not one of"):
        maps["cat"]
    assert isinstance(maps, WordMaps) and maps["dog"].shape == maps.grid_hw


def test_text_features_are_normalised_template_averages(clip):
    feats = clip.text_features(["dog", "red fence"])
    assert feats.shape == (2, 32)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)
    bare = clip.text_features(["dog"], templates=())
    direct = F.normalize(clip.model.encode_text(clip.tokenizer(["dog"])), dim=-1)
    assert torch.allclose(bare, direct, atol=1e-5)
    with pytest.raises(ValueError, match=r"text_features must be \[1, 32\]"):
        clip.word_maps(Image.new("RGB", (80, 48)), ["dog"], text_features=torch.ones(2, 32))


# ---------------------------------------------------------------------------------------------------------
# dense features: faithful to open_clip, and the ClearCLIP recipe
# ---------------------------------------------------------------------------------------------------------


def test_raw_method_matches_open_clip_forward(clip):
    raw = Clip.from_model(clip.model, clip.tokenizer, dense="raw")
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    feats = raw.patch_features(image)
    visual = clip.model.visual
    with torch.no_grad():
        out = visual.forward_intermediates(
            (image[None] - raw.mean) / raw.std,
            indices=[1],
            output_fmt="NLC",
            normalize_intermediates=True,
            intermediates_only=True,
        )
    ref = F.normalize(out["image_intermediates"][0][0] @ visual.proj, dim=-1).reshape(8, 8, -1)
    assert torch.allclose(feats, ref, atol=1e-5)


def test_manual_block_equals_open_clip_block(clip):
    block = clip.model.visual.transformer.resblocks[-1]
    tokens = torch.randn(1, 65, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(
            _dense_block(block, tokens, DenseSpec("qk", residual=True, ffn=True)), block(tokens), atol=1e-5
        )


def test_clearclip_is_qq_attention_without_residual_or_ffn(clip):
    # with the key projection replaced by the query projection, nn.MultiheadAttention itself computes q-q
    # attention: ClearCLIP's features must then equal ln_post(attn(ln_1(x))) @ proj
    model = copy.deepcopy(clip.model)
    block = model.visual.transformer.resblocks[-1]
    width = block.attn.embed_dim
    with torch.no_grad():
        block.attn.in_proj_weight[width : 2 * width] = block.attn.in_proj_weight[:width]
        block.attn.in_proj_bias[width : 2 * width] = block.attn.in_proj_bias[:width]
    qq = Clip.from_model(model, clip.tokenizer, dense="clearclip")
    assert qq.dense == DenseSpec("qq", residual=False, ffn=False)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    visual = model.visual
    with torch.no_grad():
        out = visual.forward_intermediates(
            (image[None] - qq.mean) / qq.std,
            indices=[0],
            output_fmt="NLC",
            intermediates_only=True,
            output_extra_tokens=True,
        )
        x = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
        y = block.ln_1(x)
        attended = block.ls_1(block.attn(y, y, y, need_weights=False)[0])
        ref = F.normalize(visual.ln_post(attended)[0, 1:] @ visual.proj, dim=-1).reshape(8, 8, -1)
    assert torch.allclose(qq.patch_features(image), ref, atol=1e-5)
    # and the original model's ClearCLIP features do not depend on its key projection
    assert torch.allclose(qq.patch_features(image), clip.patch_features(image), atol=1e-5)


@pytest.mark.parametrize("method", sorted(DENSE_METHODS))
def test_every_dense_method_runs(clip, method):
    c = Clip.from_model(clip.model, clip.tokenizer, dense=method)
    maps = c.word_maps(Image.new("RGB", (80, 48)), ["dog"])
    assert maps.maps.shape == (1, 8, 13) and torch.isfinite(maps.maps).all()
    assert maps.method == method


def test_bad_dense_method_and_tower(clip):
    with pytest.raises(ValueError, match="unknown dense method"):
        Clip.from_model(clip.model, clip.tokenizer, dense="nope")
    cfg = tiny_config()
    cfg["vision_cfg"] = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}
    with pytest.raises(TypeError, match="VisionTransformer"):
        Clip(cfg).patch_features(Image.new("RGB", (64, 64)))


def test_from_model_uses_the_preprocess_normalisation():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**tiny_config())
    preprocess = open_clip.image_transform(64, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    c = Clip.from_model(model, open_clip.SimpleTokenizer(context_length=16), preprocess)
    assert torch.equal(c.mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(c.std.flatten(), torch.full((3,), 0.25))
    assert c.preprocess is preprocess
    assert c.patch_features(Image.new("RGB", (80, 48))).shape == (8, 13, 32)


# ---------------------------------------------------------------------------------------------------------
# loading weights: local files only, never a pickle, never a download
# ---------------------------------------------------------------------------------------------------------


def _features(c: Clip) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.rand(3, 48, 80, generator=torch.Generator().manual_seed(3))
    return c.patch_features(image), c.text_features(["dog", "fence"])


def test_load_from_local_safetensors(clip, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file(clip.model.state_dict(), str(path))
    torch.manual_seed(123)  # different random init: the weights must come from the file
    loaded = Clip(tiny_config(), pretrained=path)
    assert loaded.weights == str(path)
    for a, b in zip(_features(clip), _features(loaded), strict=True):
        assert torch.equal(a, b)
    # a folder holding the file works too
    assert torch.equal(_features(Clip(tiny_config(), pretrained=tmp_path))[0], _features(clip)[0])


def test_load_from_local_dir_schema(clip, tmp_path):
    from safetensors.torch import save_file

    save_file(clip.model.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_config()}))
    loaded = Clip(f"local-dir:{tmp_path}")
    assert torch.equal(_features(loaded)[0], _features(clip)[0])


def test_load_pt_with_weights_only(clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.model.state_dict().items()}, "epoch": 3}, path)
    torch.manual_seed(321)
    loaded = Clip(tiny_config(), pretrained=str(path))
    for a, b in zip(_features(clip), _features(loaded), strict=True):
        assert torch.equal(a, b)


class _Payload:
    """Unpickling this would create a file: the marker that an arbitrary object was executed."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_with_arbitrary_object_is_refused(clip, tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    state = dict(clip.model.state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, path)
    with pytest.raises(ValueError, match="refusing to load .*never unpickles"):
        Clip(tiny_config(), pretrained=path)
    assert not marker.exists()


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "ViT-H-14.safetensors"
    with pytest.raises(FileNotFoundError, match=r"not found: .*nowhere.*\.safetensors.*never downloads"):
        Clip(tiny_config(), pretrained=missing)
    with pytest.raises(FileNotFoundError, match="not found"):
        Clip(tiny_config(), pretrained="weights/missing.bin")
    with pytest.raises(FileNotFoundError, match="not found"):
        anchors.load_state_dict(missing)


def test_unsupported_suffix_and_mismatched_weights(clip, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match="accepted suffixes"):
        Clip(tiny_config(), pretrained=bad)
    other = tmp_path / "other.safetensors"
    save_file(Clip(tiny_config(vision_width=32)).model.state_dict(), str(other))
    with pytest.raises(RuntimeError, match="do not fit"):
        Clip(tiny_config(), pretrained=other)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'.*list_models"):
        Clip("ViT-Q-99")
    with pytest.raises(ValueError, match="embed_dim"):
        Clip({"vision_cfg": {}})


def test_cache_lookup_never_downloads(tmp_path, monkeypatch):
    import huggingface_hub
    import open_clip.pretrained

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", no_network)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    # a known tag whose file is not in the (empty) cache
    with pytest.raises(FileNotFoundError, match="not in the local cache.*never downloads"):
        Clip("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="known open_clip tag"):
        Clip("ViT-B-32", pretrained="no_such_tag", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        Clip("hf-hub:nobody/no-such-clip", cache_dir=str(tmp_path))


def test_hf_hosted_tokenizer_requires_offline_mode(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = tiny_config()
    cfg["text_cfg"]["hf_tokenizer_name"] = "some/tokenizer"
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1"):
        Clip(cfg)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path):
    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    path = tmp_path / "openai.pt"
    torch.jit.save(torch.jit.script(Double()), str(path))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="TorchScript archive"):
        anchors.load_state_dict(path)
