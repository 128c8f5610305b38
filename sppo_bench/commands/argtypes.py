"""argparse ``type`` functions: bad values become one-line command-line errors."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path


def int_at_least(low: int, high: int | None = None) -> typing.Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (and <= ``high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            if text.strip().lstrip("+-").isdigit():  # more digits than Python converts
                raise argparse.ArgumentTypeError(
                    f"a {len(text.strip())}-digit number is out of range"
                ) from None
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            valid = f">= {low}" if high is None else f"{low} to {high}"
            shown = text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"
            raise argparse.ArgumentTypeError(f"{shown} is out of range; valid: {valid}")
        return value

    return parse


def unit_float(text: str) -> float:
    """An argparse ``type``: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is out of range; valid: 0 to 1")
    return value


def tensorboard_dir(text: str) -> Path:
    """An argparse ``type``: a folder for TensorBoard event files. TensorBoard must be installed
    and the path must not be a file, so that a run never starts only to fail at its first row."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a folder")
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError("needs TensorBoard: pip install tensorboard") from None
    return path


SEED = int_at_least(0, 2**32 - 1)  # numpy's seed range
