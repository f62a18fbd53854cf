"""What every command works with: the configured backends and the addresses commands take.

The configuration is read exactly as ``StorageModule.configure()`` reads it in an application:
lexigram loads ``application.yaml`` (the working directory's, or ``--config PATH``) with its
``LEX_*`` environment overrides, and ``StorageProvider`` validates the ``storage:`` section and
builds one driver per backend. Drivers are prepared (roots created, clients opened) only when a
command first uses them, and all are closed at the end.

Addresses: ``NAME:key`` is an object of the backend NAME, a plain ``key`` (where only objects are
accepted) is on the default backend, ``-`` is stdin or stdout, and anything else (where files are
accepted) is a local path; ``./a:b`` names a local file whose name holds a colon.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from lexigram import Container
from lexigram.config import LexigramConfig
from lexigram.contracts.core.config import ConfigProtocol

from lexigram_storage.config import StorageConfig
from lexigram_storage.drivers.base import BaseDriver
from lexigram_storage.errors import StorageConfigurationError
from lexigram_storage.provider import StorageProvider

__all__ = ["Backends", "LocalRef", "ObjectRef", "Ref", "StdioRef", "UsageError", "open_backends"]

_NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*):(.*)$", re.DOTALL)


class UsageError(Exception):
    """Bad arguments or configuration (exit code 2)."""


@dataclass(frozen=True)
class ObjectRef:
    backend: str
    key: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.key}"


@dataclass(frozen=True)
class LocalRef:
    path: Path
    folder: bool = False  # written with a trailing slash: a folder, existing or not

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class StdioRef:
    def __str__(self) -> str:
        return "-"


Ref = ObjectRef | LocalRef | StdioRef


async def open_backends(path: Path | None) -> Backends:
    """The configured backends (drivers built, not yet prepared); ``UsageError`` when the
    configuration cannot be read or is invalid."""
    app_config = await asyncio.to_thread(_app_config, path)
    container = Container()
    container.singleton(ConfigProtocol, app_config)
    provider = StorageProvider()
    try:
        await provider.register(container)  # validates the storage: section, builds drivers
    except StorageConfigurationError as exc:
        raise UsageError(_one_line(exc)) from exc
    return Backends(provider)


def _app_config(path: Path | None) -> LexigramConfig:
    """lexigram's configuration: the YAML file (and its profile overlay) + ``LEX_*``."""
    if path is not None and not path.is_file():
        raise UsageError(f"configuration file not found: {path}")
    source = path or Path("application.yaml")
    try:
        return LexigramConfig.from_yaml(source)
    except Exception as exc:
        raise UsageError(f"{source}: {_one_line(exc)}") from exc


class Backends:
    """The backends of one command run, each prepared on first use."""

    def __init__(self, provider: StorageProvider) -> None:
        assert provider.config is not None  # set by register()
        self.config: StorageConfig = provider.config
        self._provider = provider
        self._ready: dict[str, asyncio.Task[None]] = {}

    @property
    def names(self) -> list[str]:
        return list(self._provider.drivers)

    @property
    def default(self) -> str:
        return self.config.default_backend()

    def driver(self, name: str) -> BaseDriver:
        """The driver of backend *name*, not necessarily prepared."""
        try:
            return self._provider.drivers[name]
        except KeyError:
            raise UsageError(f"unknown backend {name!r} (backends: {', '.join(self.names)})") from None

    async def get(self, name: str) -> BaseDriver:
        """The driver of backend *name*, prepared."""
        driver = self.driver(name)
        if name not in self._ready:
            self._ready[name] = asyncio.ensure_future(driver.prepare())
        await asyncio.shield(self._ready[name])
        return driver

    async def aclose(self) -> None:
        """Close every driver (once, in reverse order)."""
        await self._provider.shutdown()

    # ------------------------------------------------------------------ addresses

    def object_ref(self, arg: str) -> ObjectRef:
        """``NAME:key`` or a plain key on the default backend."""
        named = _NAMED.match(arg)
        if named and named.group(1) in self._provider.drivers:
            return ObjectRef(named.group(1), named.group(2))
        if named:
            self.driver(named.group(1))  # raises: an unknown backend name
        return ObjectRef(self.default, arg)

    def any_ref(self, arg: str) -> Ref:
        """``-``, ``NAME:key``, or a local path."""
        if arg == "-":
            return StdioRef()
        named = _NAMED.match(arg)
        if named is None:
            return LocalRef(Path(arg), folder=arg.endswith("/"))
        if named.group(1) not in self._provider.drivers:
            raise UsageError(f"unknown backend {named.group(1)!r} in {arg!r} (backends: "
                             f"{', '.join(self.names)}); write ./{arg} for a local file")
        return ObjectRef(named.group(1), named.group(2))


def _one_line(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())
