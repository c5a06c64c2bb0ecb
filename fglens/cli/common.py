"""What every ``fglens`` command shares: the one-line user error and the numeric option type.

Importing this module is cheap (no torch).

Example:
    >>> from fglens.cli.common import fail, finite_float
    >>> finite_float("0.5")
    0.5
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any


class UsageError(Exception):
    """Bad input: reported as one line ``fglens <command>: <message>`` on stderr, exit status 2."""


def fail(command: str, message: Any) -> int:
    """Print the one-line error of `command` and return the exit status of bad input (2)."""
    text = str(message.args[0]) if isinstance(message, KeyError) and message.args else str(message)
    print(f"fglens {command}: {text}", file=sys.stderr)
    return 2


def finite_float(text: str) -> float:
    """The argparse type of every numeric option: a finite number (NaN and infinities are refused, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value
