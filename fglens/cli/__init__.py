"""The `fglens` command: one module of this package per subcommand, each with `register(sub)` and `run(args)`.

Examples:
    fglens demo --out demo/          # record a run on the built-in tiny Wan I2V pipeline, print a table
    fglens bench --json bench.json   # plain vs traced vs naive recorder at several token counts
    fglens bench --edit              # plain vs fg.FocalGuidance on 1, 2, ... edited layers

Importing a command module is cheap (no torch): heavy imports happen inside its `run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

#: subcommands in the order `fglens --help` lists them; each is the module fglens.cli.<name>
COMMANDS = ("demo", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fglens",
        description="Look inside video diffusion transformers and steer them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fglens demo --out demo/\n  fglens bench --json bench.json\n\n"
        "`fglens COMMAND --help` shows each command's options and an example.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
