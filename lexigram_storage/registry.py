"""DriverRegistry: driver name -> factory, with an entry-point group for third-party drivers.

A factory is ``factory(entry: NamedStorageConfig, context: DriverContext) -> BlobStoreProtocol``.
Built-in drivers are imported only when first built, so a missing optional SDK surfaces as a
``StorageConfigurationError`` naming the ``pip install "lexigram_storage[extra]"`` to run.
Third-party packages declare ``[project.entry-points."lexigram_storage.drivers"]
mydriver = "my_pkg.driver:factory"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from lexigram_storage.catalogue import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    add_runtime_name,
    declared_entry_points,
    known_driver_names,
)
from lexigram_storage.drivers.base import BaseDriver, DriverContext
from lexigram_storage.errors import StorageConfigurationError

if TYPE_CHECKING:
    from lexigram_storage.config import NamedStorageConfig

__all__ = ["ENTRY_POINT_GROUP", "DriverContext", "DriverFactory", "DriverRegistry",
           "known_driver_names"]


DriverFactory = Callable[["NamedStorageConfig", DriverContext], "BaseDriver"]


class DriverRegistry:
    """Maps driver names to factories and builds drivers from named backend configs."""

    def __init__(self) -> None:
        self._factories: dict[str, DriverFactory] = {}

    def register(self, name: str, factory: DriverFactory) -> None:
        """Add or replace the factory for *name* (configs may then use ``driver: name``)."""
        self._factories[name] = factory
        add_runtime_name(name)

    def names(self) -> list[str]:
        return list(dict.fromkeys([*known_driver_names(), *self._factories]))

    def factory(self, name: str) -> DriverFactory:
        if name in self._factories:
            return self._factories[name]
        if name in BUILTIN:
            target, extra = BUILTIN[name]
            return _builtin_factory(name, target, extra)
        ep = declared_entry_points().get(name)
        if ep is not None:
            loaded = ep.load()
            factory: DriverFactory = getattr(loaded, "from_named", loaded)
            self._factories[name] = factory
            return factory
        raise StorageConfigurationError(
            f"unknown driver {name!r}; valid drivers: {', '.join(self.names())}",
            hint=f"Register it with DriverRegistry.register() or the {ENTRY_POINT_GROUP!r} "
                 "entry-point group.",
        )

    def create(self, entry: NamedStorageConfig, context: DriverContext | None = None
               ) -> BaseDriver:
        """Build the driver for one named backend."""
        return self.factory(entry.driver)(entry, context or DriverContext())


def _builtin_factory(name: str, target: str, extra: str | None) -> DriverFactory:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name:
            raise StorageConfigurationError(
                f"driver {name!r} is not available in this version of lexigram_storage",
                cause=exc,
            ) from exc
        if extra is None:
            raise
        raise StorageConfigurationError(
            f"driver {name!r} needs an optional dependency that is not installed "
            f"({exc.name or exc})",
            hint=f'pip install "lexigram_storage[{extra}]"',
            cause=exc,
        ) from exc
    driver_cls = getattr(module, class_name)
    factory: DriverFactory = driver_cls.from_named
    return factory
