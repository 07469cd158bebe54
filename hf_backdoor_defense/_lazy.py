"""Names a package hands out on first use: its ``__getattr__`` imports the module that defines each one.

Keeps ``import hf_backdoor_defense`` (and ``hbd --help``) free of torch, transformers and datasets until a name
that needs them is used.

Example (in a package's ``__init__.py``):
    >>> _LAZY = {"load_text_classification": ".loading"}                      # doctest: +SKIP
    >>> __getattr__ = lazy_getattr(__name__, _LAZY, globals())                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each name to the module defining it (relative to
    ``package``, e.g. ``".loading"`` or ``"..models.teacher"``, or absolute); the value is cached in
    ``namespace`` (the package's ``globals()``) so the lookup runs once."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
