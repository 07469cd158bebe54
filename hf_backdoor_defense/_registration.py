"""Register the MuScleLoRA adapter type with PEFT without importing PEFT (and torch) up front.

``import hf_backdoor_defense`` must be enough for ``PeftModel.from_pretrained`` to load a MuScleLoRA adapter,
yet the ``hbd`` command line should not pay for torch, transformers and PEFT before it prints its help. So:
if PEFT is already imported, the tuner is imported (and registered) at once; otherwise a finder on
``sys.meta_path`` waits for the first ``import peft`` and imports the tuner right after PEFT has loaded.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

_TUNER = "hf_backdoor_defense.tuners.musclelora"


def register_with_peft() -> None:
    """Import the MuScleLoRA tuner now if PEFT is loaded, else as soon as PEFT is first imported."""
    if "peft" in sys.modules:
        importlib.import_module(_TUNER)
    elif not any(isinstance(finder, _AfterPeftImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Hands out PEFT's own module spec with a loader that imports the tuner once PEFT has executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        for finder in sys.meta_path:  # PEFT's real spec, from the finders after this one
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterLoad(spec.loader, self)
                return spec
        return None


class _RegisterAfterLoad(importlib.abc.Loader):
    """Wraps PEFT's loader: runs it, drops the finder, imports the tuner; everything else is delegated."""

    def __init__(self, loader, finder: _AfterPeftImport):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        importlib.import_module(_TUNER)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_data...
        return getattr(self._loader, name)
