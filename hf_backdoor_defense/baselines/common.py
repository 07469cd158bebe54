"""What the baselines share: reading texts from a list or a ``datasets.Dataset``."""

from __future__ import annotations

from typing import Any

__all__ = ["texts_of"]


def texts_of(data: Any, text_column: str = "text") -> list[str]:
    """The texts of ``data``: a list (or tuple) of strings, or a dataset's ``text_column``."""
    if isinstance(data, (list, tuple)):
        return [str(t) for t in data]
    if text_column not in getattr(data, "column_names", ()):
        raise ValueError(f"`text_column` {text_column!r} is not a column of the dataset: "
                         f"{getattr(data, 'column_names', None)}.")
    return list(data[text_column])


def check_positive_ints(config: Any, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` that is not an integer >= 1 on ``config``."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
