"""argparse helpers shared by the ``hbd`` sub-commands and the benchmark scripts."""

from __future__ import annotations

import argparse

__all__ = ["int_or_none"]


def int_or_none(text: str) -> int | None:
    """argparse ``type`` for an optional integer: ``"none"`` (any case) gives ``None``.

    Example:
        >>> int_or_none("8"), int_or_none("None")
        (8, None)
    """
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None
