"""fglens.pipelines: loading by name or path, checking an item before any work, frames to mp4."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fglens as fg
from fglens.pipelines import call_kwargs, frames_of, load_image, load_pipeline, pipeline_class, save_video


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-wan")


def test_tiny_pipeline_runs_with_checked_kwargs_and_seed_means_same_noise(pipe):
    image = fg.testing.reference_image()
    a = frames_of(pipe(**call_kwargs(pipe, image=image, prompt="a dog jumps", seed=3, steps=2)))
    b = frames_of(pipe(**call_kwargs(pipe, image=image, prompt="a dog jumps", seed=3, steps=2)))
    c = frames_of(pipe(**call_kwargs(pipe, image=image, prompt="a dog jumps", seed=4, steps=2)))
    assert a.shape == (5, 32, 48, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_item_errors_before_any_work(pipe, tmp_path):
    image = fg.testing.reference_image()
    with pytest.raises(ValueError, match="image-to-video: give a reference image"):
        call_kwargs(pipe, prompt="a dog")
    with pytest.raises(FileNotFoundError, match="reference image not found"):
        call_kwargs(pipe, prompt="a dog", image=tmp_path / "missing.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="is not an image PIL can read"):
        call_kwargs(pipe, prompt="a dog", image=tmp_path / "bad.png")
    with pytest.raises(ValueError, match="width 50 is not a multiple of 16"):
        call_kwargs(pipe, prompt="a dog", image=image, width=50)
    with pytest.raises(ValueError, match=r"aspect 1\.500\) but the video is 32x32"):
        call_kwargs(pipe, prompt="a dog", image=image, height=32, width=32)
    with pytest.raises(ValueError, match="non-empty"):
        call_kwargs(pipe, prompt=" ", image=image)
    t2v = load_pipeline("tiny-wan-t2v")
    with pytest.raises(ValueError, match="text-to-video: it takes no reference image"):
        call_kwargs(t2v, prompt="a dog", image=image)


def test_load_refuses_unknown_classes_before_reading_weights(tmp_path):
    folder = tmp_path / "sdxl"
    folder.mkdir()
    with pytest.raises(ValueError, match="has no model_index.json"):
        load_pipeline(folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert pipeline_class(folder) == "StableDiffusionXLPipeline"
    with pytest.raises(ValueError, match="holds a StableDiffusionXLPipeline, which fglens cannot trace"):
        load_pipeline(folder)
    with pytest.raises(FileNotFoundError, match="tiny-wan, tiny-wan-t2v"):
        load_pipeline(tmp_path / "nothing")


def test_saved_pipeline_folder_loads_offline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "wan")
    loaded = load_pipeline(tmp_path / "wan", device="cpu")
    kwargs = dict(image=fg.testing.reference_image(), prompt="a dog jumps", seed=0, steps=1, height=32, width=48,
                  num_frames=5)
    # same weights, same noise; the reloaded tensors' memory layout may change float summation order (~1e-7)
    np.testing.assert_allclose(frames_of(loaded(**call_kwargs(loaded, **kwargs))),
                               frames_of(pipe(**call_kwargs(pipe, **kwargs))), atol=1e-5)


def test_video_round_trip(tmp_path):
    import imageio.v3 as iio

    frames = np.zeros((4, 32, 48, 3), np.float32)
    frames[:, :, :24] = 1.0  # left half white
    path = save_video(frames, tmp_path / "out" / "v.mp4", fps=8)
    back = iio.imread(path)
    assert back.shape == (4, 32, 48, 3)
    assert back[:, :, :20].mean() > 200 and back[:, :, 28:].mean() < 50  # lossy codec: coarse check
    assert load_image((frames[0] * 255).astype(np.uint8)).size == (48, 32)


def test_pipelines_and_tiny_names_come_from_the_adapters():
    """An architecture is declared once, in its adapter: the pipeline classes `load_pipeline` accepts, the tiny
    pipelines and their call sizes, and the docs' site tables all read `Adapter` attributes."""
    from fglens import docgen
    from fglens.adapters import ADAPTERS
    from fglens.pipelines import PIPELINES, REFUSED, TINY, TINY_SIZES

    assert PIPELINES == {cls: a.short for a in ADAPTERS for cls in a.pipeline_classes}
    assert REFUSED == {cls: why for a in ADAPTERS for cls, why in a.refused_pipelines.items()}
    assert not set(REFUSED) & set(PIPELINES)
    assert set(TINY) == {t.name for a in ADAPTERS for t in a.tiny_pipelines}
    for a in ADAPTERS:
        assert a.short and a.pipeline_classes and a.tiny_transformer[0], a.__name__
        for t in a.tiny_pipelines:
            assert (TINY_SIZES[t.name]["height"], TINY_SIZES[t.name]["width"], TINY_SIZES[t.name]["num_frames"]) \
                == t.size
        assert f"sites-{a.short}.md" in docgen.BLOCKS
