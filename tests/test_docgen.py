"""The generated parts of docs/ (site tables from the adapters, the API reference) are up to date."""

from __future__ import annotations

from pathlib import Path

import pytest

from fglens import docgen

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("file", sorted(docgen.BLOCKS))
def test_generated_docs_are_current(file):
    text = (DOCS / file).read_text()
    assert docgen.render(text, docgen.BLOCKS[file], file=file) == text, (
        f"docs/{file} is out of date: run `python -m fglens.docgen`"
    )


def test_site_tables_list_every_site_kind_of_the_adapters():
    wan = docgen.site_table("wan")
    for pattern in ("`blocks.{i}.self`", "`blocks.{i}.cross.image`", "`blocks.{i}.cross.text`", "`blocks.{i}.attn2`"):
        assert pattern in wan
    hunyuan = docgen.site_table("hunyuan")
    assert "`double.{i}.joint`" in hunyuan and "`single_transformer_blocks.{i}.attn`" in hunyuan
    assert "`transformer_blocks.{i}.attn`" in docgen.site_table("hunyuan15")
    ltx = docgen.site_table("ltx")
    assert "`blocks.{i}.cross.text`" in ltx and "`transformer_blocks.{i}.attn2`" in ltx
    ltx2 = docgen.site_table("ltx2")
    assert "`blocks.{i}.cross.audio`" in ltx2 and "`transformer_blocks.{i}.audio_to_video_attn`" in ltx2
    with pytest.raises(ValueError, match="family must be one of"):
        docgen.site_table("no-such-family")


def test_api_reference_refuses_a_listed_name_that_does_not_exist(monkeypatch):
    monkeypatch.setitem(docgen.API, "Tracing", ["fglens.trace", "fglens.no_such_function"])
    with pytest.raises(LookupError, match="lists fglens.no_such_function, which does not exist"):
        docgen.api_reference()


def test_render_needs_markers():
    with pytest.raises(ValueError, match="has no <!-- generated:api -->"):
        docgen.render("no markers here", {"api": lambda: "x"})
