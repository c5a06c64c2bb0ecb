"""The shipped toy pipelines: checksums, offline loading, determinism, and planted layers.

How well the model follows instructions is measured by `fglens toy report` (docs/toy-world.md).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import fglens as fg
from fglens.toy.experiment import item_seed
from fglens.toy.load import WEIGHTS, manifest, verify


@pytest.fixture(scope="module")
def base():
    return fg.toy.pipeline("base")


def test_shipped_files_match_their_checksums_and_damage_is_named(tmp_path):
    verify()
    files = manifest()
    assert any(f.startswith("base/") for f in files) and any(f.startswith("weak/") for f in files)
    assert sum((WEIGHTS / f).stat().st_size for f in files) <= 25 * 2**20
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    target = copy / "base" / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    verify(copy, only="weak")  # the weak variant does not read the base transformer
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors does not match"):
        verify(copy, only="base")
    (copy / "shared" / "vae" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        verify(copy, only="weak")


def test_variants_and_planted_layers():
    weak = fg.toy.pipeline("weak")
    assert fg.toy.planted_layers(weak) == fg.toy.info("weak")["planted_layers"] == ["blocks.3", "blocks.4"]
    with pytest.raises(ValueError, match="unknown toy variant"):
        fg.toy.pipeline("strong")
    with pytest.raises(ValueError, match="not a toy pipeline"):
        fg.toy.planted_layers(fg.testing.tiny_wan_i2v_pipeline())


def test_sampling_is_deterministic_for_a_seed(base):
    item = fg.toy.suite("test", n=1, seed=0)[0]
    call = {**fg.toy.CALL, "num_inference_steps": 4}

    def once(seed):
        return base(image=item.image, prompt=item.prompt, generator=torch.Generator().manual_seed(seed),
                    **call).frames[0]

    a, b, c = once(0), once(0), once(1)
    assert a.shape == (9, 64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_item_seeds_pair_conditions():
    a, b = fg.toy.suite("test", n=2, seed=0)
    assert item_seed(a, 0) == item_seed(a, 0) != item_seed(b, 0)
