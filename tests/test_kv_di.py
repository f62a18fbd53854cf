"""``StorageConfig.kv`` through a real lexigram ``Application``: ``StorageModule.configure()``
binds ``StorageBackendProtocol`` (connected at boot, disconnected at shutdown, health-checked);
``stub()`` binds an in-memory store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lexigram import Application
from lexigram.contracts.core.health import HealthStatus
from lexigram.contracts.exceptions.container import ContainerValidationError
from lexigram.contracts.infra.storage import BlobStoreProtocol, StorageBackendProtocol
from lexigram.di.provider import Provider

from lexigram_storage import (
    StorageBootError,
    StorageConfig,
    StorageConfigurationError,
    StorageKVConfig,
    StorageModule,
)
from lexigram_storage.kv import InMemoryKVStorage, LocalStorage
from lexigram_storage.kv.local import DATABASE_NAME
from tests import support
from tests.support import start


class SessionStore:
    """A consumer of the key-value store, injected by type."""

    def __init__(self, kv: StorageBackendProtocol) -> None:
        self.kv = kv


class ServicesProvider(Provider):
    name = "services"

    async def register(self, container: Any) -> None:
        container.singleton(SessionStore)


def app_with(*imports: Any) -> Application:
    return support.app_with(*imports, module_providers=[ServicesProvider])


def kv_config(tmp_path: Path, **kv: Any) -> StorageConfig:
    return StorageConfig(default_driver="memory",
                         kv=StorageKVConfig(base_path=str(tmp_path / "kv"), **kv))


async def test_configure_binds_a_connected_local_store(running: list[Application],
                                                        tmp_path: Path) -> None:
    app = await start(running, app_with(StorageModule.configure(
        kv_config(tmp_path, default_ttl=30, lock_timeout=2))))
    sessions = await app.container.resolve(SessionStore)
    kv = sessions.kv
    assert isinstance(kv, LocalStorage)
    assert kv is await app.container.resolve(StorageBackendProtocol)
    assert (kv.default_ttl, kv.lock_timeout, kv.fsync) == (30, 2, False)
    assert (tmp_path / "kv" / DATABASE_NAME).is_file()  # connected at boot
    await kv.set("session:1", {"user": 7})
    assert await kv.get("session:1") == {"user": 7}
    health = await app.health_check()
    assert health.status == HealthStatus.HEALTHY
    storage = next(c for c in health.components if c.component == "storage")
    assert storage.details is not None
    assert storage.details["kv"]["status"] == "healthy"
    assert set(storage.details) == {"backends", "events", "kv"}
    assert storage.details["kv"]["path"] == str(kv.path)
    await app.stop()
    assert not (tmp_path / "kv" / (DATABASE_NAME + "-wal")).exists()  # disconnected
    again = LocalStorage(tmp_path / "kv")
    assert await again.get("session:1") == {"user": 7}
    await again.disconnect()


async def test_configure_binds_a_memory_store(running: list[Application],
                                              tmp_path: Path) -> None:
    app = await start(running, app_with(StorageModule.configure(
        kv_config(tmp_path, driver="memory", default_ttl=5))))
    kv = await app.container.resolve(StorageBackendProtocol)
    assert isinstance(kv, InMemoryKVStorage)
    assert kv.default_ttl == 5
    assert not (tmp_path / "kv").exists()


async def test_without_kv_nothing_is_bound(running: list[Application]) -> None:
    config = StorageConfig(default_driver="memory")
    app = await start(running, support.app_with(StorageModule.configure(config)))
    assert not app.container.has(StorageBackendProtocol)
    assert app.container.has(BlobStoreProtocol)
    with pytest.raises(ContainerValidationError, match="StorageBackendProtocol"):
        await app_with(StorageModule.configure(config)).start()  # a consumer fails the boot


async def test_stub_binds_an_in_memory_store(running: list[Application], tmp_path: Path) -> None:
    app = await start(running, app_with(StorageModule.stub(kv_config(tmp_path))))
    kv = (await app.container.resolve(SessionStore)).kv
    assert isinstance(kv, InMemoryKVStorage)
    await kv.set("k", 1)
    assert await kv.get("k") == 1
    assert not (tmp_path / "kv").exists()  # the local store was not built
    assert (await app.health_check()).status == HealthStatus.HEALTHY


async def test_stub_without_config_binds_one_too(running: list[Application], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = await start(running, app_with(StorageModule.stub()))
    assert isinstance(await app.container.resolve(StorageBackendProtocol), InMemoryKVStorage)


async def test_yaml_and_env(running: list[Application], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "application.yaml").write_text(
        "storage:\n"
        "  default_driver: memory\n"
        "  kv:\n"
        "    driver: local\n"
        "    base_path: ./state/kv\n"
        "    default_ttl: 60\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEX_STORAGE__KV__DEFAULT_TTL", "90")  # env wins
    app = await start(running, app_with(StorageModule.configure()))
    kv = await app.container.resolve(StorageBackendProtocol)
    assert isinstance(kv, LocalStorage)
    assert kv.default_ttl == 90
    assert (tmp_path / "state" / "kv" / DATABASE_NAME).is_file()


async def test_env_only(running: list[Application], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEX_STORAGE__DEFAULT_DRIVER", "memory")
    monkeypatch.setenv("LEX_STORAGE__KV__DRIVER", "memory")
    monkeypatch.setenv("LEX_STORAGE__KV__DEFAULT_TTL", "12")
    app = await start(running, app_with(StorageModule.configure()))
    kv = await app.container.resolve(StorageBackendProtocol)
    assert isinstance(kv, InMemoryKVStorage)
    assert kv.default_ttl == 12
    config = StorageConfig()  # the model reads LEX_STORAGE__* itself too
    assert config.kv == StorageKVConfig(driver="memory", default_ttl=12)


async def test_invalid_kv_config_stops_the_app(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "application.yaml").write_text(
        "storage:\n  default_driver: memory\n  kv:\n    driver: redis\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageConfigurationError) as exc:
        await app_with(StorageModule.configure()).start()
    assert "kv.driver" in exc.value.message
    with pytest.raises(ValueError):
        StorageKVConfig(default_ttl=0)


async def test_an_unusable_base_path_fails_the_boot(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    app = app_with(StorageModule.configure(
        StorageConfig(default_driver="memory", kv=StorageKVConfig(base_path=str(blocker / "kv")))))
    with pytest.raises(StorageBootError) as exc:
        await app.start()
    assert exc.value.message.startswith("kv: failed to start")
