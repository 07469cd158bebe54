"""Atomic file writes: a temporary sibling renamed into place, so a reader never sees half a file.

The one place every module writes its JSON, text and small binary outputs through; folder outputs (saved
models) are built in a hidden sibling and renamed into place (:func:`staged_directory`).

Example:
    >>> from hf_backdoor_defense.atomic import write_json_atomic
    >>> write_json_atomic("/tmp/hbd-example/results.json", {"cacc": 0.81})   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` (parents created) via a temporary sibling; return the path.

    The file gets the usual permissions (0666 minus the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically; see :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: int | None = 2) -> Path:
    """Write ``payload`` as JSON atomically (sets become sorted lists, other unknown objects strings)."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, default=_jsonable) + "\n")


def _existing(path: str | os.PathLike | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p.resolve() if p.exists() else None


def check_output_dir(output: str | os.PathLike, inputs: Sequence[str | os.PathLike | None], overwrite: bool, *,
                     output_flag: str = "--output", overwrite_flag: str = "--overwrite") -> Path:
    """Resolve the folder output ``output``; refuse input folders (either way nested), ancestors of input files,
    and non-empty folders without ``overwrite``.

    Args:
        output: The output folder.
        inputs: Paths the run reads (folders or files; Hub names and ``None`` are skipped).
        overwrite: Allow replacing a non-empty output folder.
        output_flag: How the caller names the output argument in error messages.
        overwrite_flag: How the caller names the overwrite switch in error messages.

    Raises:
        ValueError: ``output`` is, contains or lies inside an input folder, or contains an input file.
        FileExistsError: ``output`` is a file, or a non-empty folder and ``overwrite`` is false.
    """
    out = Path(output).expanduser().resolve()
    for raw in inputs:
        src = _existing(raw)
        if src is None:
            continue
        # A folder input may not be, contain or lie inside the output; a file input may not lie inside it.
        clash = out == src or out in src.parents or (src.is_dir() and src in out.parents)
        if clash:
            raise ValueError(f"{output_flag} {out} overlaps the input {src}: choose a folder outside every input.")
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{output_flag} {out} exists and is not a folder.")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{output_flag} {out} is not empty; pass {overwrite_flag} to replace it.")
    return out


def staging_path(target: str | os.PathLike) -> Path:
    """The fixed hidden sibling ``.<name>.partial`` where a folder output is built before :func:`publish_directory`.

    Fixed (not random) so that every process of a multi-process launch computes the same path.
    """
    target = Path(target)
    return target.parent / f".{target.name}.partial"


def publish_directory(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``staging`` to ``target``, replacing what was there; return ``target``.

    The old ``target`` (if any) is renamed aside first and deleted only after the new folder is in place, so a
    reader sees either the old or the new folder, never a half-written one.
    """
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return target
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    backup.rmdir()
    os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return target


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder output in a temporary sibling and publish it to ``target`` when the block succeeds.

    On an exception the temporary folder is deleted and ``target`` is left as it was.

    Example:
        >>> from hf_backdoor_defense.atomic import staged_directory
        >>> with staged_directory("/tmp/hbd-example/purified") as folder:   # doctest: +SKIP
        ...     model.save_pretrained(folder)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # the usual folder permissions, not mkdtemp's 0700
    try:
        yield staging
        publish_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
