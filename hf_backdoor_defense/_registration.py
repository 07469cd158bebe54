"""Register the MuScleLoRA adapter type with PEFT without importing PEFT (and torch) up front.

``import hf_backdoor_defense`` must be enough for ``PeftModel.from_pretrained`` to load a MuScleLoRA adapter,
yet the ``hbd`` command line should not pay for torch, transformers and PEFT before it prints its help. So:
if PEFT is already imported, the tuner is imported (and registered) at once; otherwise a finder on
``sys.meta_path`` waits for the first ``import peft`` and imports the tuner right after PEFT has loaded. A
tuner that fails to import then only warns: ``import peft`` itself never fails because of this package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

_TUNER = "hf_backdoor_defense.tuners.musclelora"
_MARK = "_hbd_after_peft_import"  # on the finder; an attribute, not the class, survives a reload of this module


def register_with_peft() -> None:
    """Import the MuScleLoRA tuner now if PEFT is loaded, else as soon as PEFT is first imported."""
    if "peft" in sys.modules:
        importlib.import_module(_TUNER)
    elif not any(getattr(finder, _MARK, False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())


def _import_tuner() -> None:
    try:
        importlib.import_module(_TUNER)
    except Exception as err:  # PEFT stays usable; MuScleLoRA names raise when used
        warnings.warn(f"hf_backdoor_defense could not register MuScleLoRA with PEFT ({type(err).__name__}: {err}); "
                      "importing hf_backdoor_defense.tuners.musclelora shows the full error.", ImportWarning,
                      stacklevel=2)


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Hands out PEFT's own module spec with a loader that imports the tuner once PEFT has executed."""

    _hbd_after_peft_import = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        for finder in sys.meta_path:  # PEFT's real spec, from the other finders
            if getattr(finder, _MARK, False) or not hasattr(finder, "find_spec"):
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
        _import_tuner()

    def __getattr__(self, name):  # get_resource_reader, is_package, get_data...
        if name.startswith("__") or name in ("_loader", "_finder"):  # copy / pickle before __init__ ran
            raise AttributeError(name)
        return getattr(self._loader, name)
