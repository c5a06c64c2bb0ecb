"""Shared test setup: everything offline, tiny pipelines built once per session."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def wan_i2v():
    from fglens import testing

    return testing.tiny_wan_i2v_pipeline()


@pytest.fixture(scope="session")
def wan_t2v():
    from fglens import testing

    return testing.tiny_wan_t2v_pipeline()


@pytest.fixture(scope="session")
def wan22():
    from fglens import testing

    return testing.tiny_wan22_i2v_pipeline()


@pytest.fixture(scope="session")
def ref_image():
    from fglens import testing

    return testing.reference_image()
