"""``fglens eval import vbench2`` (issue 15 item 9): the real VBench2_full_info.json from the installed package
(installed by `make test` with --no-deps), images from a folder or a tiny local text-to-image pipeline."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

import fglens as fg  # noqa: E402
from fglens.eval.suite import load_suite  # noqa: E402
from fglens.eval.vbench2 import DIMENSIONS, entries, import_vbench2, info_path  # noqa: E402


@pytest.fixture(scope="module")
def info():
    try:
        return json.loads(info_path().read_text())
    except ModuleNotFoundError:
        pytest.skip("vbench2 is not installed (pip install --no-deps vbench2==0.1.1; make test installs it)")


def test_every_instruction_following_prompt_becomes_an_item(info):
    lines = entries()
    expected = sum(1 for e in info for d in e["dimension"] if d in DIMENSIONS)
    assert len(lines) == expected == 527  # the package's 0.1.1 file
    by_dim = {d: [e for e in lines if e["dimension"] == d] for d in DIMENSIONS}
    assert {d: len(v) for d, v in by_dim.items()} == {
        "Dynamic_Attribute": 91, "Human_Interaction": 100, "Motion_Order_Understanding": 99,
        "Dynamic_Spatial_Relationship": 69, "Camera_Motion": 108, "Complex_Plot": 60}
    first = by_dim["Dynamic_Attribute"][0]
    source = info[int(first["id"].rsplit("-", 1)[1])]
    assert first["prompt"] == source["prompt_en"].strip()
    assert first["questions"] == [q.replace(" (yes or no)", "") for q in source["auxiliary_info"]]
    zoom = next(e for e in by_dim["Camera_Motion"] if e["prompt"] == "Garden, zoom in.")
    assert zoom["questions"] == ["Does the camera zoom in?"] and zoom["words"] == ["Garden", "zoom"]
    with pytest.raises(ValueError, match="unknown VBench-2.0 dimension"):
        entries(["Human_Anatomy"])


def test_the_suite_loads_with_images_from_a_folder_or_a_local_t2i_pipeline(info, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    wanted = [e["id"] for e in entries(["Camera_Motion", "Dynamic_Attribute"])]
    ids = [i for i in wanted if i.startswith("camera")][:2] + [i for i in wanted if i.startswith("dynamic")][:2]
    for i in ids:
        fg.testing.reference_image().save(refs / f"{i}.png")
    with pytest.raises(FileNotFoundError, match="reference image\\(s\\) missing"):
        import_vbench2(tmp_path / "a", dimensions=["Camera_Motion"], images=refs)
    suite = load_suite(import_vbench2(tmp_path / "a", dimensions=["Camera_Motion", "Dynamic_Attribute"],
                                      images=refs, limit=2))
    assert [item.id for item in suite] == ids
    assert sorted(set(suite.categories)) == ["camera_motion", "dynamic_attribute"]

    fg.testing.tiny_t2i_pipeline().save_pretrained(tmp_path / "t2i")
    path = import_vbench2(tmp_path / "b", dimensions=["Human_Interaction"], t2i=tmp_path / "t2i", size=(32, 48),
                          steps=2, limit=2)
    suite = load_suite(path)
    assert len(suite) == 2 and suite.items[0].load_image().size == (48, 32)
    again = import_vbench2(tmp_path / "c", dimensions=["Human_Interaction"], t2i=tmp_path / "t2i", size=(32, 48),
                           steps=2, limit=2)
    assert (path.parent / "images" / f"{suite.items[0].id}.png").read_bytes() == \
        (again.parent / "images" / f"{suite.items[0].id}.png").read_bytes()  # seeded per item


def test_the_command(info, tmp_path, capsys):
    from fglens.cli import main

    refs = tmp_path / "refs"
    refs.mkdir()
    for e in entries(["Camera_Motion"])[:3]:
        fg.testing.reference_image().save(refs / f"{e['id']}.jpg")
    code = main(["eval", "import", "vbench2", "--dimensions", "Camera_Motion", "--images", str(refs), "--limit", "3",
                 "--out", str(tmp_path / "suite")])
    assert code == 0 and "(3 items)" in capsys.readouterr().out
    assert len(load_suite(tmp_path / "suite" / "suite.jsonl")) == 3
    assert main(["eval", "import", "vbench2", "--images", str(refs), "--out", str(tmp_path / "x"),
                 "--dimensions", "Nope"]) == 2
    assert "unknown VBench-2.0 dimension" in capsys.readouterr().err
