"""Register the timm entry points when timm is imported, without importing timm (or torch) here.

timm has no plugin entry points, so a ``sys.meta_path`` finder wraps the loader of the
top-level ``timm`` package: once timm's own ``__init__`` has run, the torchspine names are
registered (:func:`torchspine.models.timm_models.timm_register`). If timm is already imported,
they are registered at once. Nothing happens for programs that never import timm.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from types import ModuleType

__all__ = ["install"]

_log = logging.getLogger(__name__)


def _register() -> None:
    try:
        from torchspine.models.timm_models import timm_register

        timm_register()
    except Exception as e:  # a broken timm must not break ``import timm`` for the user
        _log.warning("torchspine: could not register the timm entry points: %s", e)


class _Loader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self.wrapped = wrapped

    def __getattr__(self, name: str):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.wrapped, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.wrapped.exec_module(module)
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders answer below
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register now if timm is imported, else when it is (idempotent)."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
