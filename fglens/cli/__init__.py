"""The `fglens` command: one module of this package per subcommand, each with `register(sub)` and `run(args)`.

Examples:
    fglens demo --out demo/                                   # tiny Wan I2V: record, print a table, draw figures
    fglens diagnose --pipeline tiny-wan --prompt "a dog jumps" --words dog,jumps --store runs.zarr
    fglens plot runs.zarr --out figures/                      # every figure of a store
    fglens generate --pipeline tiny-wan --prompt "a dog jumps" --words dog --clip tiny --out out/
    fglens inspect runs.zarr                                  # runs, completeness, dims, sizes
    fglens view runs.zarr                                     # interactive viewer (--html FILE: one file)
    fglens sweep spec.jsonl --pipeline tiny-wan --store sweep.zarr   # also under torchrun / accelerate launch
    fglens eval builtin --pipeline tiny-wan --out eval/ --edit focal-guidance --layers 1,2 --src 3 --clip tiny
    fglens eval import vbench2 --dimensions Dynamic_Attribute --images refs/ --out suite/   # VBench-2.0's prompts
    fglens bench --json bench.json                            # overhead and memory, measured side by side
    fglens train suite.jsonl --pipeline tiny-wan --layers 1 --teacher RECIPE --out lora/   # Focal Guidance as a LoRA

Importing a command module is cheap (no torch): heavy imports happen inside its `run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

#: subcommands in the order `fglens --help` lists them; each is the module fglens.cli.<name>
COMMANDS = ("demo", "diagnose", "generate", "plot", "inspect", "view", "bench", "sweep", "eval", "train", "toy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fglens",
        description="Look inside video diffusion transformers and steer them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  fglens demo --out demo/\n"
        "  fglens diagnose --pipeline tiny-wan --prompt \"a dog jumps\" --words dog,jumps --store runs.zarr\n"
        "  fglens plot runs.zarr --out figures/\n  fglens inspect runs.zarr\n\n"
        "`fglens COMMAND --help` shows each command's options and an example.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "import"]:  # `fglens eval import BENCHMARK ...`: its own parser (no suite, no pipeline)
        from .evalimport import main as import_main

        return import_main(argv[2:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
