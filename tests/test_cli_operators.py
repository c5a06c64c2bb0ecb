"""The operator options of ``fglens generate`` and ``fglens eval`` reach the recipe (issue 15 item 6)."""

import argparse

import pytest

from fglens.cli.common import UsageError
from fglens.cli.operators import add_operator_options, operator_entries, with_dense


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_operator_options(parser)
    return parser.parse_args(list(argv))


def test_each_option_becomes_its_recipe_key():
    assert operator_entries(_args()) == {}
    got = operator_entries(_args("--anchor-words", "dog,fence", "--anchor-frames", "first", "--threshold", "soft",
                                 "--cache-mode", "prev_step", "--pairing", "nearest", "--cache-heads", "mean",
                                 "--source-map", "clean"))
    assert got == {"words": ["dog", "fence"], "frames": "first", "threshold": None, "mode": "prev_step",
                   "pairing": "nearest", "heads": "mean", "source_map": "clean"}
    assert operator_entries(_args("--anchor-words", "all")) == {"anchor_words": "all"}
    assert with_dense({"model": "ViT-B-16", "pretrained": "w"}, _args("--clip-dense", "raw"))["dense"] == "raw"


@pytest.mark.parametrize("argv,message", [
    (("--anchor-frames", "1.5"), "--anchor-frames takes all, first or a decay"),
    (("--anchor-frames", "nan"), "--anchor-frames takes all, first or a decay"),
    (("--anchor-words", "dog,,fence"), "--anchor-words takes visible, all or comma-separated words"),
])
def test_bad_values_are_refused_with_what_is_accepted(argv, message):
    with pytest.raises(UsageError, match=message):
        operator_entries(_args(*argv))
    with pytest.raises(UsageError, match="--clip-dense needs a CLIP model given by name"):
        with_dense("tiny", _args("--clip-dense", "raw"))


def test_the_eval_command_builds_its_recipe_with_them():
    from fglens.cli import build_parser
    from fglens.cli.eval import recipe

    args = build_parser().parse_args(["eval", "builtin", "--pipeline", "tiny-wan", "--out", "x", "--edit",
                                      "cache-transfer", "--src", "3", "--dst", "1", "--cache-heads", "mean",
                                      "--source-map", "clean"])
    assert recipe(args) == {"type": "cache_transfer", "src": [3], "dst": [1], "heads": "mean", "source_map": "clean"}
    args = build_parser().parse_args(["eval", "builtin", "--pipeline", "tiny-wan", "--out", "x", "--edit",
                                      "cache-transfer", "--src", "3", "--dst", "1", "--anchor-frames", "first"])
    with pytest.raises(UsageError, match="does not take"):
        recipe(args)
