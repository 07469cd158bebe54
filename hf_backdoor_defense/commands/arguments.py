"""argparse helpers shared by the ``hbd`` sub-commands and the benchmark scripts."""

from __future__ import annotations

import argparse

__all__ = ["boolean", "float_or_none", "int_or_none", "type_of_field"]


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


def float_or_none(text: str) -> float | None:
    """argparse ``type`` for an optional number: ``"none"`` (any case) gives ``None``.

    Example:
        >>> float_or_none("2e-5"), float_or_none("none")
        (2e-05, None)
    """
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def boolean(text: str) -> bool:
    """argparse ``type`` for a yes/no value (``true``/``false``, ``yes``/``no``, ``1``/``0``).

    Example:
        >>> boolean("False"), boolean("yes")
        (False, True)
    """
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def type_of_field(field) -> type | object:
    """The argparse ``type`` of a dataclass field (``int | None`` -> :func:`int_or_none`, ``bool`` ->
    :func:`boolean`, ...), for scripts that turn a settings dataclass into options.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class S:
        ...     lr: float | None = None
        >>> type_of_field(dataclasses.fields(S)[0]) is float_or_none
        True
    """
    text = str(field.type)
    optional = "None" in text
    for name, plain, maybe in (("bool", boolean, boolean), ("int", int, int_or_none), ("float", float, float_or_none)):
        if text.split("|")[0].strip() == name:
            return maybe if optional else plain
    return str
