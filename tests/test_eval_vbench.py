"""VBench's DINOv2 subject consistency and RAFT dynamic degree (issue 15 item 10): tiny random-weight models from
transformers and torchvision, constructed videos with known answers, and the formulas against a reference."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fglens as fg  # noqa: E402
from fglens.eval.vbench import (  # noqa: E402
    DinoSubjectConsistency,
    RaftDynamicDegree,
    dynamic_degree,
    load_dinov2,
    load_raft,
)


@pytest.fixture(scope="module")
def dino():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=28, patch_size=14)).eval()


@pytest.fixture(scope="module")
def raft():
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    return raft_small(weights=None).eval()


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 32, 48, 3), dtype=np.float32)


def test_dino_subject_consistency_follows_vbench_formula(dino):
    """Against the formula written out with the model's own forward on the same preprocessed pixels."""
    video, ref = _frames(4, 0), _frames(1, 1)[0]
    scorer = DinoSubjectConsistency(dino)
    got = scorer.score(video, None, reference=ref)
    x = torch.from_numpy(np.concatenate([ref[None], video])).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(28, 42), mode="bicubic", align_corners=False, antialias=True)[..., 7:35]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        f = F.normalize(dino(pixel_values=x).pooler_output, dim=-1)
    terms = [(max(0.0, float(f[0] @ f[t])) + max(0.0, float(f[t - 1] @ f[t]))) / 2 for t in range(2, 5)]
    assert abs(got - float(np.mean(terms))) < 1e-5


def test_dino_known_answers(dino):
    still = np.repeat(_frames(1, 2), 5, axis=0)
    scorer = DinoSubjectConsistency(dino)
    assert scorer.score(still, None, reference=still[0]) == pytest.approx(1.0, abs=1e-6)
    assert scorer.score(_frames(5, 3), None, reference=still[0]) < 0.999  # other images every frame
    missing = DinoSubjectConsistency(None).score(still, None)
    assert np.isnan(missing) and missing.reason == "missing: no DINOv2 model given"


def test_dynamic_degree_thresholds_are_vbenchs():
    """thres = 6·min(H,W)/256 px; count = round(4·P/16), at least one pair."""
    assert dynamic_degree(np.array([6.1] + [0.0] * 7), 256, 256) == 0.0  # 8 pairs need 2 over 6 px
    assert dynamic_degree(np.array([6.1, 6.1] + [0.0] * 6), 256, 256) == 1.0
    assert dynamic_degree(np.array([5.9] * 8), 256, 256) == 0.0
    assert dynamic_degree(np.array([1.6, 1.6, 0, 0]), 64, 64) == 1.0  # 1.5 px at 64 px, one pair needed of 4
    assert dynamic_degree(np.array([1.4, 0, 0, 0]), 64, 64) == 0.0


def test_raft_pair_scores_are_the_top_five_percent_of_the_flow(raft):
    """A stand-in flow network with a known flow: the score is the mean of its 5 % largest magnitudes; frames are
    given in [-1, 1], padded to multiples of 8, the flow cropped back."""
    seen = {}

    class KnownFlow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, a, b, num_flow_updates):
            seen["shape"], seen["range"], seen["updates"] = tuple(a.shape), (float(a.min()), float(a.max())), \
                num_flow_updates
            flow = torch.zeros(a.shape[0], 2, *a.shape[-2:])
            flow[:, 0, :8, :] = 10.0  # 8 rows of 192 px moving 10 px: 1,536 of 24,576 pixels, more than 5 %
            flow[:, 1, 20:21, :] = 1.0  # slower pixels, outside the top 5 %
            return [flow * 0, flow]

    video = np.random.default_rng(4).random((5, 128, 192, 3), dtype=np.float32)
    video[:, 0, 0, 0] = 0.0
    video[:, 1, 0, 0] = 1.0
    scorer = RaftDynamicDegree(KnownFlow(), iterations=7)
    scores = scorer.pair_scores(video)
    assert seen["shape"] == (4, 3, 128, 192) and seen["updates"] == 7
    assert seen["range"][0] >= -1 and seen["range"][1] <= 1
    np.testing.assert_allclose(scores, 10.0)
    assert scorer.score(video, None) == 1.0  # 10 px > 6·128/256 = 3 px in all 4 pairs
    # a small video is upsampled to 128 px for RAFT and the flow divided back: 10 px there are 5 px here
    scores = scorer.pair_scores(video[:, ::2, ::2])
    assert seen["shape"] == (4, 3, 128, 192)
    np.testing.assert_allclose(scores, 5.0)


def test_raft_runs_end_to_end_on_a_real_torchvision_raft(raft):
    video = _frames(3, 5)[:, :30, :45]  # not multiples of 8: padded, then cropped
    scorer = RaftDynamicDegree(raft, iterations=2)
    scores = scorer.pair_scores(video)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, scorer.pair_scores(video))  # deterministic
    assert scorer.score(video, None) in (0.0, 1.0)
    assert np.isnan(RaftDynamicDegree(None).score(video, None))


def test_local_weights_load_and_nothing_downloads(dino, raft, tmp_path):
    dino.save_pretrained(tmp_path / "dino")
    loaded = load_dinov2(tmp_path / "dino")
    video = _frames(3, 6)
    assert DinoSubjectConsistency(loaded).score(video, None, reference=video[0]) == pytest.approx(
        DinoSubjectConsistency(dino).score(video, None, reference=video[0]), abs=1e-6)
    torch.save(raft.state_dict(), tmp_path / "raft.pth")
    small = load_raft(tmp_path / "raft.pth", large=False)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), raft.state_dict().values(), strict=True))
    with pytest.raises(FileNotFoundError, match="no DINOv2 model folder"):
        load_dinov2(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no RAFT weights file"):
        load_raft(tmp_path / "nothing.pth")


def test_default_scorers_add_them_when_given(dino, raft):
    names = [s.name for s in fg.eval.default_scorers(dino=dino, raft=raft)]
    assert names[-2:] == ["dino_subject_consistency", "raft_dynamic_degree"]
    assert len(fg.eval.default_scorers()) == 6
