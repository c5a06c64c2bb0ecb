"""Scorers of fglens.eval on constructed videos whose answers are known, computed here independently.

The CLIP-based scorers are tested with a stub feature space whose features we know (an image is its colour,
"red" is the red axis), because random tiny CLIP weights cannot tell red from blue; the real CLIP wiring is
tested separately on the tiny open_clip model for shapes, agreement with `fg.anchors.Clip` and determinism.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fglens.eval.scorers import (
    AlignmentChange,
    BackgroundConsistency,
    ClipFeatures,
    Missing,
    MotionMagnitude,
    SubjectConsistency,
    TextAlignment,
    VLMJudge,
    answer_tokens,
    storyboard,
)
from fglens.eval.suite import Item

AXES = {"red": 0, "green": 1, "blue": 2}


class ColourFeatures:
    """A known feature space: a patch's feature is its RGB colour, an image's its mean colour, a word's the
    unit vector of its colour name (phrases: the colour word they contain)."""

    def text(self, texts):
        out = torch.zeros(len(texts), 3, dtype=torch.float64)
        for i, t in enumerate(texts):
            out[i, next(AXES[w] for w in t.split() if w in AXES)] = 1.0
        return out

    def image(self, frames):
        return torch.nn.functional.normalize(torch.from_numpy(np.asarray(frames, np.float64).mean((1, 2))), dim=-1)

    def patches(self, frames):
        return torch.nn.functional.normalize(torch.from_numpy(np.asarray(frames, np.float64)), dim=-1)


def _item(tmp_path, image=None, **kw):
    path = tmp_path / "ref.png"
    Image.fromarray(image if image is not None else np.zeros((8, 8, 3), np.uint8)).save(path)
    fields = dict(id="x", image=path, prompt="the red ball turns blue", category="dynamic_attribute",
                  words=("ball", "blue"), questions=("Does the ball turn blue?",))
    fields.update(kw)
    return Item(**fields)


def _solid(colour, frames=4, size=(8, 8)):
    video = np.zeros((frames, *size, 3), np.float32)
    video[...] = colour
    return video


# -- motion ------------------------------------------------------------------------------------------------------


def test_frozen_video_scores_zero_motion():
    rng = np.random.default_rng(0)
    frame = rng.uniform(size=(1, 16, 24, 3)).astype(np.float32)
    assert MotionMagnitude().score(np.repeat(frame, 6, axis=0), None) == 0.0


def test_motion_matches_a_float64_reference_and_grows_with_motion():
    rng = np.random.default_rng(1)
    video = rng.uniform(size=(5, 6, 7, 3)).astype(np.float32)
    m = np.mean([np.mean(np.abs(video[t + 1].astype(np.float64) - video[t])) for t in range(4)])
    assert MotionMagnitude(scale=0.05).score(video, None) == pytest.approx(1 - math.exp(-m / 0.05), abs=1e-12)
    slow, fast = (np.linspace(0, s, 5, dtype=np.float32)[:, None, None, None] * np.ones((5, 4, 4, 3), np.float32)
                  for s in (0.05, 0.5))
    assert 0 < MotionMagnitude().score(slow, None) < MotionMagnitude().score(fast, None) < 1


def test_motion_refuses_bad_input_and_one_frame():
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        MotionMagnitude().score(np.zeros((4, 4, 3)), None)
    one = MotionMagnitude().score(np.zeros((1, 4, 4, 3)), None)
    assert isinstance(one, Missing) and math.isnan(one) and "one frame" in one.reason
    with pytest.raises(ValueError, match="positive"):
        MotionMagnitude(scale=0)


# -- alignment and its change --------------------------------------------------------------------------------------


def test_alignment_is_clipscore_over_words_and_frames(tmp_path):
    video = _solid((0.6, 0.0, 0.8))  # colour vector (0.6, 0, 0.8): cos with red 0.6, with blue 0.8
    item = _item(tmp_path, words=("red", "blue"), prompt="red and blue")
    expected = np.mean([min(2.5 * 0.6, 1.0), min(2.5 * 0.8, 1.0)])  # CLIPScore weight 2.5, clipped at 1
    assert TextAlignment(ColourFeatures()).score(video, item) == pytest.approx(expected)
    half = TextAlignment(ColourFeatures(), weight=1.0).score(video, item)
    assert half == pytest.approx((0.6 + 0.8) / 2)
    green = _item(tmp_path, words=("green",), prompt="green")
    assert TextAlignment(ColourFeatures()).score(video, green) == 0.0


def test_a_colour_change_as_asked_moves_the_alignment_change(tmp_path):
    t = np.linspace(0, 1, 6, dtype=np.float32)[:, None, None, None]
    red_to_blue = (1 - t) * np.array([1, 0, 0], np.float32) + t * np.array([0, 0, 1], np.float32)
    red_to_blue = red_to_blue * np.ones((6, 8, 8, 3), np.float32)
    item = _item(tmp_path, target=("blue ball",))
    scorer = AlignmentChange(ColourFeatures(), scale=0.5)
    # first frame pure red (cos with blue 0), last pure blue (cos 1): delta = 1
    assert scorer.score(red_to_blue, item) == pytest.approx(1 - math.exp(-1 / 0.5))
    assert scorer.score(_solid((1, 0, 0)), item) == 0.0  # frozen: no change
    assert scorer.score(red_to_blue[::-1].copy(), item) == 0.0  # turning away from the target
    partial = red_to_blue.copy()
    partial[-1] = np.array([0.6, 0, 0.8], np.float32)  # ends with cos(blue) = 0.8
    assert scorer.score(partial, item) == pytest.approx(1 - math.exp(-0.8 / 0.5))
    no_target = scorer.score(red_to_blue, _item(tmp_path))
    assert isinstance(no_target, Missing) and "target" in no_target.reason


def test_clip_scorers_are_missing_without_features(tmp_path):
    item = _item(tmp_path, target=("blue ball",))
    for cls in (TextAlignment, AlignmentChange, SubjectConsistency, BackgroundConsistency):
        value = cls(None).score(_solid((1, 0, 0)), item)
        assert isinstance(value, Missing) and math.isnan(value)
        assert value.reason == "missing: no CLIP model given"


# -- consistency ---------------------------------------------------------------------------------------------------


def _ball_scene(ball, background, size=16):
    """A disc of colour `ball` on `background`, uint8 RGB."""
    yy, xx = np.mgrid[:size, :size]
    img = np.empty((size, size, 3), np.float32)
    img[...] = background
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2] = ball
    return img


def test_consistency_of_a_copy_of_the_reference_is_one(tmp_path):
    ref = _ball_scene((1, 0, 0), (0, 1, 0))
    item = _item(tmp_path, image=(ref * 255).astype(np.uint8), subject="red")
    video = np.repeat(ref[None], 4, axis=0)
    assert SubjectConsistency(ColourFeatures()).score(video, item) == pytest.approx(1.0)
    assert BackgroundConsistency(ColourFeatures()).score(video, item) == pytest.approx(1.0)


def test_background_change_lowers_background_but_not_subject_consistency(tmp_path):
    ref = _ball_scene((1, 0, 0), (0, 1, 0))
    item = _item(tmp_path, image=(ref * 255).astype(np.uint8), subject="red")
    changed = _ball_scene((1, 0, 0), (0, 0.6, 0.8))  # background green -> (0, 0.6, 0.8): cos 0.6 with green
    video = np.stack([ref, changed, changed])
    assert SubjectConsistency(ColourFeatures()).score(video, item) == pytest.approx(1.0)
    assert BackgroundConsistency(ColourFeatures()).score(video, item) == pytest.approx(0.6)


def test_subject_change_lowers_subject_but_not_background_consistency(tmp_path):
    ref = _ball_scene((1, 0, 0), (0, 1, 0))
    item = _item(tmp_path, image=(ref * 255).astype(np.uint8), subject="red")
    # the ball becomes (0.8, 0, 0.6): still the reddest patches (found by the mask), cos 0.8 with pure red
    changed = _ball_scene((0.8, 0, 0.6), (0, 1, 0))
    video = np.stack([ref, changed, changed, changed])
    assert SubjectConsistency(ColourFeatures()).score(video, item) == pytest.approx(0.8)
    assert BackgroundConsistency(ColourFeatures()).score(video, item) == pytest.approx(1.0)


def test_a_moving_subject_is_followed(tmp_path):
    ref = _ball_scene((1, 0, 0), (0, 1, 0))
    item = _item(tmp_path, image=(ref * 255).astype(np.uint8), subject="red")
    moved = np.roll(ref, 3, axis=1)  # the ball moves right, nothing changes colour
    video = np.stack([ref, moved])
    assert SubjectConsistency(ColourFeatures()).score(video, item) == pytest.approx(1.0)
    assert BackgroundConsistency(ColourFeatures()).score(video, item) == pytest.approx(1.0)


# -- the CLIP wiring on the tiny open_clip model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    from fglens.anchors import Clip, tiny_config

    torch.manual_seed(0)
    return Clip(tiny_config())


def test_clip_features_shapes_agreement_and_determinism(tiny_clip):
    rng = np.random.default_rng(0)
    video = rng.uniform(size=(3, 32, 48, 3)).astype(np.float32)
    feats = ClipFeatures(tiny_clip)
    image, text, patches = feats.image(video), feats.text(["ball", "blue"]), feats.patches(video)
    assert image.shape == (3, 32) and text.shape == (2, 32)
    assert patches.shape == (3, *tuple(tiny_clip.patch_features(torch.from_numpy(video[0]).permute(2, 0, 1)).shape))
    for t in (image, text, patches):
        assert torch.allclose(t.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert torch.equal(text, tiny_clip.text_features(["ball", "blue"]).float())
    assert torch.equal(patches[1], tiny_clip.patch_features(torch.from_numpy(video[1]).permute(2, 0, 1)).float())
    # the global embedding: the model's own encode_image of the centre crop, normalised (independent recompute)
    x = torch.nn.functional.interpolate(torch.from_numpy(video).permute(0, 3, 1, 2), size=(64, 96), mode="bicubic",
                                        align_corners=False, antialias=True).clamp(0, 1)[..., :, 16:80]
    ref = tiny_clip.model.encode_image((x - tiny_clip.mean) / tiny_clip.std)
    assert torch.allclose(image, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)
    again = ClipFeatures(tiny_clip)
    assert torch.equal(again.image(video), image) and torch.equal(again.patches(video.copy()), patches)


def test_clip_scorers_run_on_the_tiny_clip(tmp_path, tiny_clip):
    rng = np.random.default_rng(2)
    ref = (rng.uniform(size=(32, 48, 3)) * 255).astype(np.uint8)
    item = _item(tmp_path, image=ref, target=("blue ball",))
    video = rng.uniform(size=(4, 32, 48, 3)).astype(np.float32)
    feats = ClipFeatures(tiny_clip)
    for cls in (TextAlignment, AlignmentChange, SubjectConsistency, BackgroundConsistency):
        a, b = cls(feats).score(video, item), cls(feats).score(video, item)
        assert 0.0 <= a <= 1.0 and a == b
    copy = np.repeat(ref[None].astype(np.float32) / 255, 3, axis=0)
    assert SubjectConsistency(feats).score(copy, item) == pytest.approx(1.0, abs=1e-5)


# -- the VLM judge ---------------------------------------------------------------------------------------------


def test_judge_without_a_model_is_missing_never_faked(tmp_path):
    value = VLMJudge().score(_solid((1, 0, 0)), _item(tmp_path))
    assert isinstance(value, Missing) and math.isnan(value) and value.reason.startswith("missing:")
    with pytest.raises(FileNotFoundError, match="no vision-language model folder"):
        VLMJudge(tmp_path / "nope")


def test_storyboard_samples_evenly_and_tiles_in_reading_order():
    video = np.zeros((7, 2, 3, 3), np.float32)
    for t in range(7):
        video[t] = t / 10
    board = np.asarray(storyboard(video, 4))
    assert board.shape == (4, 6, 3)  # 2 x 2 tiles of 2 x 3
    tiles = [board[:2, :3], board[:2, 3:], board[2:, :3], board[2:, 3:]]
    assert [int(t[0, 0, 0]) for t in tiles] == [round(255 * i / 10) for i in (0, 2, 4, 6)]  # frames 0, 2, 4, 6


def test_answer_tokens_drop_shared_first_tokens():
    class Tok:
        vocab = {"yes": [5], "Yes": [6], " yes": [1, 5], " Yes": [1, 6], "no": [7], "No": [8], " no": [1, 7],
                 " No": [1, 8]}

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": self.vocab[text]}

    assert answer_tokens(Tok()) == ([5, 6], [7, 8])  # the space token 1 starts both: dropped


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A random-weight LLaVA (tiny Llama + tiny CLIP vision tower) and its processor, saved to a folder."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from fglens.testing import tiny_llama3_tokenizer

    tok = tiny_llama3_tokenizer()
    tok.add_tokens(["yes", "no", "Yes", "No"])
    text = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=0,
                       eos_token_id=4, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                              image_size=8, patch_size=2, projection_dim=8)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                         image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16,
                         pad_token_id=tok.pad_token_id, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 8},
                                                                  crop_size={"height": 8, "width": 8}),
                               tokenizer=tok, patch_size=2, vision_feature_select_strategy="default",
                               chat_template=template, image_token="<image>", num_additional_image_tokens=1)
    folder = tmp_path_factory.mktemp("vlm")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("yes", "Yes", "no", "No")}
    return folder, ids


def _reference_p_yes(judge, video, question, ids):
    """P(yes) / (P(yes) + P(no)) recomputed here: the model's logits, a float64 softmax over the whole
    vocabulary, the probabilities of the yes / no words summed."""
    model = judge._load()[0]
    inputs = judge.inputs(storyboard(video, judge.frames), judge.QUESTION.format(n=judge.frames, question=question))
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].to(torch.float64)
    p = torch.exp(logits - torch.logsumexp(logits, 0))
    p_yes, p_no = float(p[ids["yes"]] + p[ids["Yes"]]), float(p[ids["no"]] + p[ids["No"]])
    return p_yes / (p_yes + p_no)


def test_judge_probability_arithmetic_on_a_tiny_llava(tmp_path, tiny_vlm):
    folder, ids = tiny_vlm
    judge = VLMJudge(folder, frames=4, device="cpu")
    assert answer_tokens(judge._load()[1].tokenizer) == (sorted([ids["yes"], ids["Yes"]]),
                                                          sorted([ids["no"], ids["No"]]))
    rng = np.random.default_rng(0)
    video = rng.uniform(size=(5, 8, 12, 3)).astype(np.float32)
    questions = ("Does the ball turn blue?", "Is the ball blue at the end of the video?")
    one = judge.score(video, _item(tmp_path, questions=questions[:1]))
    assert one == pytest.approx(_reference_p_yes(judge, video, questions[0], ids), abs=1e-12)
    both = judge.score(video, _item(tmp_path, questions=questions))
    expected = np.mean([_reference_p_yes(judge, video, q, ids) for q in questions])
    assert both == pytest.approx(expected, abs=1e-12)
    assert 0 < both < 1 and one != 0.5


def test_judge_scores_one_half_when_yes_and_no_have_equal_logits(tmp_path, tiny_vlm):
    folder, ids = tiny_vlm
    judge = VLMJudge(folder, device="cpu")
    model = judge._load()[0]
    head = model.get_output_embeddings().weight
    with torch.no_grad():  # the four answer rows equal: every answer equally likely, whatever the input
        head[[ids["Yes"], ids["no"], ids["No"]]] = head[ids["yes"]].clone()
    assert judge.score(_solid((0.2, 0.5, 0.9)), _item(tmp_path)) == pytest.approx(0.5, abs=1e-12)
