"""Register the timm entry points when timm is imported, without importing timm (or torch) here.

timm has no plugin entry points, so :func:`on_import` puts a one-shot ``sys.meta_path`` finder
in front of the import of a top-level package: the package's own loader runs, then the
callback. :func:`install` uses it for ``timm`` with
:func:`torchspine.models.timm_models.timm_register` (at once if timm is already imported).
Nothing happens in programs that never import timm.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from types import ModuleType
from typing import Callable

__all__ = ["install", "on_import"]

_log = logging.getLogger(__name__)


class _Loader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader, callback: Callable[[], None]) -> None:
        self.wrapped = wrapped
        self.callback = callback

    def __getattr__(self, name: str):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.wrapped, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.wrapped.exec_module(module)
        try:
            self.callback()
        except Exception as e:  # a failing hook must not break the user's import
            _log.warning("torchspine: hook after importing %s failed: %s", module.__name__, e)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; the real finders answer below
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None:
            spec.loader = _Loader(spec.loader, self.callback)
        return spec


def on_import(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once the top-level package ``name`` is imported (now if it already is).

    One pending callback per package: later calls for a package not yet imported are ignored.
    """
    if name in sys.modules:
        callback()
    elif not any(isinstance(f, _Finder) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(name, callback))


def _register_timm() -> None:
    from torchspine.models.timm_models import timm_register

    timm_register()


def install() -> None:
    """Register the timm entry points now if timm is imported, else when it is (idempotent)."""
    on_import("timm", _register_timm)
