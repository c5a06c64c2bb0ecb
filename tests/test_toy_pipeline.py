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
    verify(copy, only="weak")  # the weak variant does not read the base transformer (sink does: it derives from it)
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


def test_base_follows_held_out_instructions_clearly_above_chance(base):
    """A small held-out sample (the report's first 20 test items, the same item seeds): the shipped base model
    follows its instructions far more often than chance (a random other instruction of the same category,
    scored on the truth) and than doing nothing (a frozen video). docs/toy-world.md has the full measurement."""
    from scipy.stats import binomtest

    from fglens.toy.experiment import chance_levels, evaluate, frozen_levels

    items = fg.toy.suite("test", n=20, seed=0)
    rows = evaluate(base, items, seed=0, progress=False)
    hits = int(sum(r["follows"] for r in rows))
    chance = chance_levels(items, seed=0)
    p_chance = float(np.mean([chance[item.category] for item in items]))
    do_nothing = frozen_levels(items)["all"]
    p_value = binomtest(hits, len(items), p_chance, alternative="greater").pvalue
    detail = f"{hits}/{len(items)} followed; chance {p_chance:.3f} per item ({chance}); do nothing {do_nothing:.2f}"
    assert p_value < 1e-3, detail
    assert hits / len(items) > do_nothing, detail


@pytest.fixture(scope="module")
def base_focus(base):
    """The report's word-map measurement on the base model (first 10 test items, the 7 that name an object)."""
    from fglens.toy.report import word_map_focus

    return word_map_focus(base, fg.toy.suite("test", n=10, seed=0), seed=0)


def test_base_word_maps_land_on_the_named_object_more_than_an_untrained_dit(base, base_focus):
    """The trained model's word maps put more mass inside the named object than outside on every item, and more
    than the same pipeline with its DiT at initial weights (the control: objects are salient content, so
    attention differs there whatever the text says; the trained model must beat that, not 1)."""
    from fglens.toy.report import untrained_control, word_map_focus

    items = fg.toy.suite("test", n=10, seed=0)
    trained = base_focus
    control = word_map_focus(untrained_control(base, seed=0), items, seed=0)
    assert trained["n"] == control["n"] >= 5
    detail = f"trained {trained['ratio_per_layer']}, control {control['ratio_per_layer']}"
    assert trained["items_above_1"] == 1.0, detail
    assert np.mean(trained["ratio_per_layer"]) > np.mean(control["ratio_per_layer"]) + 0.3, detail


def test_the_word_map_share_is_the_focus_ratio_bounded(base):
    """The report's bounded measure (the part of a word map's mass on the object) and its ratio (mean inside over
    mean outside) describe the same map: for one item with object area a, share = r·a / (r·a + 1 − a) per layer."""
    from fglens.toy.report import word_map_focus

    item = next(it for it in fg.toy.suite("test", n=10, seed=0) if it.words[0] in it.masks())
    focus = word_map_focus(base, [item], seed=0)
    r, a, share = np.array(focus["ratio_per_layer"]), focus["area_share"], np.array(focus["share_per_layer"])
    assert focus["n"] == 1 and 0 < a < 1 and ((share >= 0) & (share <= 1)).all()
    np.testing.assert_allclose(share, r * a / (r * a + 1 - a), rtol=1e-5)


def test_the_weak_models_planted_layers_no_longer_find_the_named_object(base_focus):
    """The planting's ground truth, measured: in the weak model the planted layers' word maps lose the focus on
    the named object that the base model's same layers have (their text keys were re-initialised and never saw
    a word again), while the other layers keep theirs: each planted layer's ratio drops by at least 0.3, and the
    planted layers drop by at least 0.3 more than the other layers on average (the other layers are the control
    for what training on alone changes). Shipped models (twelfth version, word maps taught): drops 433 and 4,220
    against -4,765 for the others (their ratios rose); the eleventh version's pair: 201 and 436 against -1,251;
    the fifth's: 0.40 and 1.70 against 0.18 (block 1 also lost 1.27); the third's: 0.36 and 0.58 against 0.07,
    the second's 0.92 and 0.41 against -0.10."""
    from fglens.toy.report import word_map_focus

    weak = fg.toy.pipeline("weak")
    planted = fg.toy.planted_layers(weak)
    focus = word_map_focus(weak, fg.toy.suite("test", n=10, seed=0), seed=0)
    ratio = dict(zip(focus["layers"], focus["ratio_per_layer"], strict=True))
    before = dict(zip(base_focus["layers"], base_focus["ratio_per_layer"], strict=True))
    detail = f"weak {ratio}, base {before}"
    assert planted == ["blocks.3", "blocks.4"]
    drop = {x: before[x] - ratio[x] for x in ratio}
    for layer in planted:
        assert drop[layer] >= 0.3, detail
    others = [x for x in ratio if x not in planted]
    assert np.mean([drop[x] for x in planted]) >= np.mean([drop[x] for x in others]) + 0.3, detail


def test_the_sink_variant_is_the_base_with_its_planted_text_keys_zeroed(base):
    """`sink` reads the base's files and zeroes the text-key projections of blocks 3 and 4 at load (nothing else
    differs), so those layers attend uniformly over the 512 text keys: each real token gets 1/512 of a row, the
    padding the rest, while the base's same layers put more on the item's words (7.9 and 16.1 times as much in the
    twelfth version, 5.8 and 12.3 in the eleventh, 3.7 in the fifth; the base too puts most of its text
    attention on the padding, as real Wan models do). The cost in following is measured by `fglens toy report
    --weak-variant sink` (docs/toy-world.md)."""
    sink = fg.toy.pipeline("sink")
    assert fg.toy.planted_layers(sink) == fg.toy.info("sink")["planted_layers"] == ["blocks.3", "blocks.4"]
    ours, theirs = dict(sink.transformer.named_parameters()), dict(base.transformer.named_parameters())
    changed = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert changed == ["blocks.3.attn2.to_k.weight", "blocks.4.attn2.to_k.weight"]
    item = next(it for it in fg.toy.suite("test", n=10, seed=0) if it.masks())
    mass = {}
    for name, pipe in (("sink", sink), ("base", base)):
        with fg.trace(pipe, record=fg.Record(words=item.words, stats=["word_mass"])) as run:
            pipe(image=item.image, prompt=item.prompt, generator=torch.Generator().manual_seed(0),
                 **{**fg.toy.CALL, "num_inference_steps": 2})
        mass[name] = run.dataset.word_mass.sel(branch="cond").mean(("step", "frame"))
    tokens = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]
    for layer in ("blocks.3", "blocks.4"):
        for word, positions in tokens.items():
            np.testing.assert_allclose(float(mass["sink"].sel(layer=layer, word=word)), len(positions) / 512,
                                       rtol=1e-4)
            assert float(mass["base"].sel(layer=layer, word=word)) > 2 * len(positions) / 512  # 7.9x, 16.1x measured


def test_a_derived_variant_of_a_trained_folder_applies_its_edit_there(base, tmp_path):
    """`fg.toy.pipeline("sink", path=run)` (and `toy report --weak-variant sink --weak run`): the sink of that run's
    model, not an unedited copy labelled sink."""
    base.save_pretrained(tmp_path / "pipeline")
    sink = fg.toy.pipeline("sink", path=tmp_path / "pipeline")
    assert fg.toy.planted_layers(sink) == ["blocks.3", "blocks.4"]
    assert float(sink.transformer.blocks[3].attn2.to_k.weight.abs().sum()) == 0.0
    assert torch.equal(sink.transformer.blocks[2].attn2.to_k.weight, base.transformer.blocks[2].attn2.to_k.weight)
    assert fg.toy.planted_layers(fg.toy.pipeline(path=tmp_path / "pipeline")) == []
    with pytest.raises(ValueError, match="unknown toy variant"):
        fg.toy.pipeline("strong", path=tmp_path / "pipeline")


def test_a_run_folder_loads_like_its_pipeline_and_the_reports_sink_is_cut_from_the_given_base(base, tmp_path):
    """`path=` takes a `fglens toy train` output folder or its pipeline/; `toy report --base RUN --weak-variant sink`
    measures the sink of RUN's model, not of the shipped base (they differed silently before)."""
    from fglens.toy.report import report_pipelines

    with torch.no_grad():
        base.transformer.blocks[2].attn2.to_k.weight.add_(1.0)  # a base that is not the shipped one
    try:
        base.save_pretrained(tmp_path / "pipeline")
    finally:
        with torch.no_grad():
            base.transformer.blocks[2].attn2.to_k.weight.sub_(1.0)
    mine = fg.toy.pipeline(path=tmp_path).transformer.blocks[2].attn2.to_k.weight  # the run folder itself
    shipped = fg.toy.pipeline("base").transformer.blocks[2].attn2.to_k.weight
    assert torch.allclose(mine, shipped + 1.0)
    pipes = report_pipelines(str(tmp_path), None, "sink")
    assert torch.equal(pipes["weak"].transformer.blocks[2].attn2.to_k.weight, mine)
    assert float(pipes["weak"].transformer.blocks[3].attn2.to_k.weight.abs().sum()) == 0.0
    assert fg.toy.planted_layers(pipes["weak"]) == ["blocks.3", "blocks.4"] and fg.toy.planted_layers(
        pipes["base"]) == []
    with pytest.raises(FileNotFoundError, match="not a toy pipeline folder"):
        fg.toy.pipeline(path=tmp_path / "nowhere")
