"""StorageProvider: configuration -> drivers -> DI bindings; boot, shutdown and health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from lexigram.contracts.core.config import ConfigProtocol
from lexigram.contracts.core.health import HealthCheckResult, HealthStatus
from lexigram.contracts.core.hooks import HookRegistryProtocol
from lexigram.contracts.events import DomainEventPublisherProtocol, EventBusProtocol
from lexigram.contracts.infra.storage import (
    BlobStoreProtocol,
    StorageBackendProtocol,
    StorageDriverProtocol,
    StorageError,
)
from lexigram.di.provider import Provider, ProviderPriority
from lexigram.logging import get_logger
from pydantic import ValidationError

from lexigram_storage.config import StorageConfig, StorageEventsConfig, StorageKVConfig
from lexigram_storage.drivers.base import BaseDriver
from lexigram_storage.drivers.memory import MemoryDriver
from lexigram_storage.errors import StorageBootError, StorageConfigurationError
from lexigram_storage.events import NO_EVENTS, StorageEvents
from lexigram_storage.kv import InMemoryKVStorage, LocalStorage
from lexigram_storage.registry import DriverContext, DriverRegistry

__all__ = ["StorageProvider"]

logger = get_logger(__name__)

_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


class StorageProvider(Provider):
    """Builds one driver per configured backend and binds them into the container.

    Bindings: ``DriverRegistry``; the default ``BlobStoreProtocol`` (and
    ``StorageDriverProtocol``) -- the primary backend, else the first, else ``default_driver``;
    and ``Annotated[BlobStoreProtocol, Named(name)]`` (also ``(BlobStoreProtocol, name)``) per
    backend. All are the driver instances themselves. With ``config.kv`` (or ``stub``), also
    ``StorageBackendProtocol``: the key-value store, connected at boot, disconnected at shutdown.

    Args:
        config: the storage configuration; ``None`` reads the application's ``storage``
            section (YAML + ``LEX_STORAGE__*`` env) at registration.
        enable_encryption: ask drivers that support it to encrypt every object server-side.
        stub: replace every backend by its own isolated memory driver (names kept).
        registry: a ``DriverRegistry`` with extra drivers registered.
    """

    name = "storage"
    priority = ProviderPriority.INFRASTRUCTURE
    optional_dependencies = ("events",)

    def __init__(
        self,
        config: StorageConfig | None = None,
        *,
        enable_encryption: bool = False,
        stub: bool = False,
        registry: DriverRegistry | None = None,
    ) -> None:
        if config is not None and not isinstance(config, StorageConfig):
            raise TypeError(
                f"StorageProvider expects a StorageConfig or None, not {type(config).__name__}"
            )
        super().__init__()
        self._config = config
        self.enable_encryption = enable_encryption
        self.stub = stub
        self.registry = registry or DriverRegistry()
        self.drivers: dict[str, BaseDriver] = {}
        self.kv: InMemoryKVStorage | LocalStorage | None = None
        self.events: StorageEvents = NO_EVENTS
        self._shut = False

    @classmethod
    def from_config(cls, config: Any, **context: Any) -> StorageProvider:
        return cls(config, **context)

    @property
    def config(self) -> StorageConfig | None:
        """The storage configuration (read from the application at registration if not given)."""
        return self._config  # type: ignore[no-any-return]

    @config.setter
    def config(self, value: Any) -> None:
        # The framework injects config sections only for providers with a config_key; this one
        # has none, so only explicit assignments land here.
        self._config = value

    # ------------------------------------------------------------------ register

    async def register(self, container: Any) -> None:
        config = self._config if self._config is not None else await _config_from_app(container)
        self._config = config
        container.singleton(DriverRegistry, self.registry)
        if not config.enabled:
            logger.info("storage.disabled")
            return
        context = DriverContext(policy=config.service.policy(),
                                enable_encryption=self.enable_encryption)
        for entry in config.named_backends():
            if self.stub:
                driver: BaseDriver = MemoryDriver(name=entry.name, policy=context.policy)
            else:
                driver = self.registry.create(entry, context)
            self.drivers[entry.name] = driver
        default = self.drivers[config.default_backend()]
        container.singleton(BlobStoreProtocol, default)
        container.singleton(StorageDriverProtocol, default)
        for name, driver in self.drivers.items():
            container.singleton(BlobStoreProtocol, driver, name=name)
            container.singleton(StorageDriverProtocol, driver, name=name)
        if config.kv is not None or self.stub:
            self.kv = _kv_store(config.kv, stub=self.stub)
            container.singleton(StorageBackendProtocol, self.kv)
        logger.debug("storage.registered", backends=list(self.drivers),
                     default=config.default_backend(), stub=self.stub)

    # ------------------------------------------------------------------ boot

    async def boot(self, container: Any) -> None:
        policy = self._config.events if self._config else StorageEventsConfig()
        self.events = StorageEvents(
            bus=await _optional(container, EventBusProtocol),
            publisher=await _optional(container, DomainEventPublisherProtocol),
            hooks=await _optional(container, HookRegistryProtocol),
            max_pending=policy.max_pending,
            overflow=policy.overflow,
        )
        for driver in self.drivers.values():
            driver.events = self.events
        timeout = self._config.health_check_timeout if self._config else 5.0
        try:
            await asyncio.gather(*(self._start(name, d, timeout) for name, d in self.drivers.items()))
            if self.kv is not None:
                await self._start_kv(self.kv, timeout)
        except BaseException:
            # The framework does not call shutdown() for a provider whose boot failed.
            await self.shutdown()
            raise
        logger.info("storage.booted", backends=list(self.drivers))

    async def _start(self, name: str, driver: BaseDriver, timeout: float) -> None:
        try:
            await asyncio.wait_for(driver.prepare(), timeout)
        except TimeoutError as exc:
            raise StorageBootError(f"not ready within {timeout}s", backend=name, cause=exc) from exc
        except Exception as exc:
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            raise StorageBootError(f"failed to start: {reason}", backend=name, cause=exc) from exc
        result = await driver.health_check(timeout)
        if result.status == HealthStatus.UNHEALTHY:
            raise StorageBootError(f"health check failed: {result.error}", backend=name,
                                   details={"health": result.details})

    async def _start_kv(self, kv: InMemoryKVStorage | LocalStorage, timeout: float) -> None:
        try:
            await asyncio.wait_for(kv.connect(), timeout)
        except TimeoutError as exc:
            raise StorageBootError(f"not ready within {timeout}s", backend="kv", cause=exc) from exc
        except Exception as exc:
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            raise StorageBootError(f"failed to start: {reason}", backend="kv", cause=exc) from exc
        result = await kv.health_check(timeout)
        if result.status == HealthStatus.UNHEALTHY:
            raise StorageBootError(f"health check failed: {result.error}", backend="kv")

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        """Deliver queued events, then close every driver once, in reverse order."""
        if self._shut:
            return
        self._shut = True
        await self.events.aclose(self._config.events.shutdown_timeout if self._config else 5.0)
        errors: list[str] = []
        for name, driver in reversed(list(self.drivers.items())):
            try:
                await driver.close()
            except Exception as exc:
                errors.append(f"{name}: {exc}")
                logger.warning("storage.close_failed", backend=name, error=repr(exc))
        if self.kv is not None:
            try:
                await self.kv.disconnect()
            except Exception as exc:
                errors.append(f"kv: {exc}")
                logger.warning("storage.close_failed", backend="kv", error=repr(exc))
        if errors:
            raise StorageError("storage: closing backends failed: " + "; ".join(errors))

    # ------------------------------------------------------------------ health

    async def health_check(self, timeout: float = 5.0) -> HealthCheckResult:
        """Worst status over all backends and the key-value store. Never raises.

        Details: ``backends`` (each backend's by its name), ``events`` (the event queue's
        counters) and, with a key-value store, ``kv`` -- so no backend name can collide.
        """
        start = time.perf_counter()
        try:
            names = list(self.drivers)
            checked: list[Any] = [*self.drivers.values(), *([self.kv] if self.kv else [])]
            results = await asyncio.gather(*(d.health_check(timeout) for d in checked))
            reports = [{"status": r.status.value, "error": r.error, **(r.details or {})}
                       for r in results]
            details: dict[str, Any] = {
                "backends": dict(zip(names, reports[:len(names)], strict=True)),
                "events": self.events.stats(),
            }
            if self.kv is not None:
                details["kv"] = reports[len(names)]
            worst = max((r.status for r in results), key=lambda s: _RANK.get(s, 2),
                        default=HealthStatus.HEALTHY)
            labels = [*names, *(["key-value store"] if self.kv else [])]
            failing = [n for n, r in zip(labels, results, strict=True) if not r.is_healthy()]
            message = (f"{len(failing)} of {len(results)} backends unhealthy: {', '.join(failing)}"
                       if failing else f"{len(results)} backends healthy")
            return HealthCheckResult(component="storage", status=worst, message=message,
                                     duration_ms=(time.perf_counter() - start) * 1000,
                                     details=details)
        except Exception as exc:  # pragma: no cover - defensive: health must never raise
            return HealthCheckResult(component="storage", status=HealthStatus.UNHEALTHY,
                                     error=f"{type(exc).__name__}: {exc}")


def _kv_store(config: StorageKVConfig | None, *, stub: bool) -> InMemoryKVStorage | LocalStorage:
    """The key-value store of *config*: in memory when stubbed or ``driver: memory``."""
    settings = config or StorageKVConfig()
    if stub or settings.driver == "memory":
        return InMemoryKVStorage(default_ttl=settings.default_ttl)
    return LocalStorage(settings.base_path, default_ttl=settings.default_ttl,
                        lock_timeout=settings.lock_timeout, fsync=settings.fsync)


async def _optional(container: Any, key: type) -> Any:
    if not container.has(key):
        return None
    # bound by another module (events, testing): not necessarily exported to ours
    return await container.resolve(key, bypass_visibility=True)


async def _config_from_app(container: Any) -> StorageConfig:
    """Validate the application's ``storage`` section (YAML + env) with ``StorageConfig``."""
    section: Any = None
    if container.has(ConfigProtocol):
        app_config = await container.resolve(ConfigProtocol)
        section = app_config.get_section("storage")
    data = dict(section or {})
    for key in ("backends", "drivers", "service", "events", "kv"):  # env: complex values as JSON
        if isinstance(data.get(key), str):
            with contextlib.suppress(json.JSONDecodeError):
                data[key] = json.loads(data[key])
    try:
        return StorageConfig(**data)
    except ValidationError as exc:
        raise StorageConfigurationError(
            f"invalid 'storage' configuration: {exc}",
            hint="Check the storage: section of application.yaml and LEX_STORAGE__* variables.",
            cause=exc,
        ) from exc
