"""The catalogue of driver names, a leaf module that ``config.py`` and ``registry.py`` both read.

Built-in drivers (where each lives and the pip extra it needs), third-party drivers declared in
the ``lexigram_storage.drivers`` entry-point group, and names given to
``DriverRegistry.register()`` at run time. Nothing here imports a driver.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

__all__ = ["BUILTIN", "BUILTIN_DRIVERS", "ENTRY_POINT_GROUP", "add_runtime_name",
           "declared_entry_points", "known_driver_names"]

ENTRY_POINT_GROUP = "lexigram_storage.drivers"

#: built-in driver name -> ("module:class", pip extra needed or None)
BUILTIN: dict[str, tuple[str, str | None]] = {
    "local": ("lexigram_storage.drivers.local:LocalDriver", None),
    "memory": ("lexigram_storage.drivers.memory:MemoryDriver", None),
    "s3": ("lexigram_storage.drivers.s3:S3Driver", "s3"),
    "r2": ("lexigram_storage.drivers.s3:R2Driver", "r2"),
    "gcs": ("lexigram_storage.drivers.gcs:GCSDriver", "gcs"),
    "azure": ("lexigram_storage.drivers.azure:AzureDriver", "azure"),
}
BUILTIN_DRIVERS: tuple[str, ...] = tuple(BUILTIN)

# names given to DriverRegistry.register(), so configurations may refer to them
_RUNTIME_NAMES: dict[str, None] = {}


@cache
def declared_entry_points() -> dict[str, EntryPoint]:
    """The drivers installed packages declare in the entry-point group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def add_runtime_name(name: str) -> None:
    """Make *name* a valid ``driver:`` in configurations (a factory was registered for it)."""
    _RUNTIME_NAMES[name] = None


def known_driver_names() -> list[str]:
    """Built-in driver names, then those of installed packages and of ``register()`` calls."""
    return list(dict.fromkeys([*BUILTIN, *declared_entry_points(), *_RUNTIME_NAMES]))
