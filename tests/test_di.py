"""StorageModule / StorageProvider booted in a real lexigram Application."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import pytest
from lexigram import Application
from lexigram.contracts.core.health import HealthStatus
from lexigram.contracts.core.hooks import HookRegistryProtocol
from lexigram.contracts.events import DomainEventPublisherProtocol, EventBusProtocol
from lexigram.contracts.infra.storage import BlobStoreProtocol, StorageDriverProtocol
from lexigram.di.markers import Named
from lexigram.di.provider import Provider
from lexigram.events.module import EventsModule
from lexigram.hooks import HookRegistry

from lexigram_storage import (
    HOOK_OBJECT_STORED,
    DriverRegistry,
    FileDeletedEvent,
    FileUploadedEvent,
    MemoryDriver,
    NamedStorageConfig,
    ObjectStoredHook,
    StorageBootError,
    StorageConfig,
    StorageConfigurationError,
    StorageModule,
    StorageProvider,
    StorageS3Config,
)
from lexigram_storage.config import StorageKVConfig, StorageLocalConfig, StorageOperationConfig
from lexigram_storage.errors import QuotaExceededError
from lexigram_storage.registry import DriverContext
from tests import support
from tests.support import start


class AvatarService:
    def __init__(self, store: BlobStoreProtocol,
                 avatars: Annotated[BlobStoreProtocol, Named("avatars")],
                 exports: Annotated[BlobStoreProtocol, Named("exports")]) -> None:
        self.store = store
        self.avatars = avatars
        self.exports = exports


class ServicesProvider(Provider):
    name = "services"

    async def register(self, container: Any) -> None:
        container.singleton(AvatarService)


def two_backends(primary: str | None = "avatars") -> StorageConfig:
    return StorageConfig(backends=[
        NamedStorageConfig(name="exports", driver="memory", primary=primary == "exports"),
        NamedStorageConfig(name="avatars", driver="memory", primary=primary == "avatars"),
    ])



def app_with(*imports: Any, providers: list[Any] | None = None) -> Application:
    return support.app_with(*imports, providers=providers, module_providers=[ServicesProvider])


async def test_configure_binds_default_and_named_instances(running: list[Application]) -> None:
    app = await start(running, app_with(StorageModule.configure(two_backends())))
    c = app.container
    default = await c.resolve(BlobStoreProtocol)
    avatars = await c.resolve(Annotated[BlobStoreProtocol, Named("avatars")])
    exports = await c.resolve((BlobStoreProtocol, "exports"))
    assert isinstance(default, MemoryDriver)
    assert isinstance(exports, MemoryDriver)
    assert default is avatars
    assert exports is not avatars
    assert exports.name == "exports"
    assert await c.resolve(StorageDriverProtocol) is default
    assert isinstance(await c.resolve(DriverRegistry), DriverRegistry)
    service = await c.resolve(AvatarService)
    assert service.store is avatars
    assert service.exports is exports
    await service.avatars.upload("u/1.png", b"png")
    assert not await service.exports.exists("u/1.png")


async def test_default_is_first_backend_without_primary(running: list[Application]) -> None:
    app = await start(running, app_with(StorageModule.configure(two_backends(primary=None))))
    assert (await app.container.resolve(BlobStoreProtocol)).name == "exports"


async def test_add_provider(running: list[Application]) -> None:
    app = Application(name="plain")
    app.add_provider(StorageProvider(two_backends()))
    await start(running, app)
    assert (await app.container.resolve((BlobStoreProtocol, "exports"))).name == "exports"


async def test_configure_builds_fresh_providers_per_call(running: list[Application]) -> None:
    for _ in range(2):
        app = await start(running, app_with(StorageModule.configure(two_backends())))
        store = await app.container.resolve(BlobStoreProtocol)
        assert not await store.exists("x")  # a fresh, empty driver each time
        await store.upload("x", b"1")
        await app.stop()


async def test_stub_keeps_names_with_memory_drivers(running: list[Application]) -> None:
    config = StorageConfig(backends=[
        NamedStorageConfig(name="avatars", driver="s3", primary=True,
                           s3=StorageS3Config(bucket="prod-avatars",
                                              endpoint_url="http://127.0.0.1:9")),
        NamedStorageConfig(name="exports", driver="s3",
                           s3=StorageS3Config(bucket="prod-exports",
                                              endpoint_url="http://127.0.0.1:9")),
    ])
    app = await start(running, app_with(StorageModule.stub(config)))
    service = await app.container.resolve(AvatarService)
    assert isinstance(service.avatars, MemoryDriver)
    assert isinstance(service.exports, MemoryDriver)
    assert service.avatars is service.store
    assert service.avatars is not service.exports
    await service.avatars.upload("a", b"1")
    assert await service.avatars.download("a") == b"1"
    assert (await app.health_check()).status == HealthStatus.HEALTHY


async def test_stub_without_config(running: list[Application], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = await start(running, app_with(EventsModule.configure(), StorageModule.stub()))
    store = await app.container.resolve(BlobStoreProtocol)
    assert isinstance(store, MemoryDriver)
    assert not (tmp_path / "storage").exists()


async def test_configure_rejects_wrong_config_type() -> None:
    with pytest.raises(TypeError, match="StorageConfig"):
        StorageModule.configure({"default_driver": "memory"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        StorageModule.stub("memory")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        StorageProvider(object())  # type: ignore[arg-type]


async def test_configure_without_config_reads_yaml_and_env(
    running: list[Application], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "application.yaml").write_text(
        "storage:\n"
        "  health_check_timeout: 2\n"
        "  service:\n"
        "    max_file_size_mb: 5\n"
        "  backends:\n"
        "    - name: docs\n"
        "      driver: memory\n"
        "    - name: media\n"
        "      driver: memory\n"
        "      primary: true\n"
        "      memory:\n"
        "        bucket: media-bucket\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEX_STORAGE__SERVICE__MAX_FILE_SIZE_MB", "0.001")  # env wins: ~1 KiB
    app = await start(running, app_with(StorageModule.configure()))
    default = await app.container.resolve(BlobStoreProtocol)
    assert default.name == "media"
    assert default.bucket == "media-bucket"
    docs = await app.container.resolve((BlobStoreProtocol, "docs"))
    await docs.upload("small", b"x" * 1000)
    with pytest.raises(QuotaExceededError):
        await docs.upload("big", b"x" * 2000)


async def test_invalid_yaml_config_stops_the_app(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "application.yaml").write_text("storage:\n  default_driver: ftp\n")
    monkeypatch.chdir(tmp_path)
    app = app_with(StorageModule.configure())
    with pytest.raises(StorageConfigurationError) as exc:
        await app.start()
    assert "default_driver" in exc.value.message
    assert "'local', 'memory', 's3', 'r2', 'gcs' or 'azure'" in exc.value.message


async def test_env_only_config(running: list[Application], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEX_STORAGE__DEFAULT_DRIVER", "memory")
    monkeypatch.setenv("LEX_STORAGE__DRIVERS__MEMORY__BUCKET", "from-env")
    app = await start(running, app_with(StorageModule.configure()))
    store = await app.container.resolve(BlobStoreProtocol)
    assert isinstance(store, MemoryDriver)
    assert store.bucket == "from-env"


# --------------------------------------------------------------------- third-party drivers


class Recording(MemoryDriver):
    closed: list[str] = []
    fail_prepare = False

    async def prepare(self) -> None:
        if self.fail_prepare:
            raise OSError("disk on fire")

    async def _close(self) -> None:
        Recording.closed.append(self.name)


def recording_registry(fail: bool = False) -> DriverRegistry:
    registry = DriverRegistry()

    def factory(entry: NamedStorageConfig, context: DriverContext) -> Recording:
        driver = Recording(name=entry.name, policy=context.policy)
        driver.fail_prepare = fail and entry.name == "b"
        return driver

    registry.register("recording", factory)
    return registry


def recording_config() -> StorageConfig:
    return StorageConfig(backends=[NamedStorageConfig(name=n, driver="recording")
                                   for n in ("a", "b", "c")])


async def test_shutdown_closes_each_driver_once_in_reverse_order() -> None:
    Recording.closed = []
    registry = recording_registry()
    provider = StorageProvider(recording_config(), registry=registry)
    app = Application(name="shutdown")
    app.add_provider(provider)
    await app.start()
    await app.stop()
    assert Recording.closed == ["c", "b", "a"]
    await provider.shutdown()  # idempotent
    await provider.drivers["a"].close()
    assert Recording.closed == ["c", "b", "a"]


async def test_failing_boot_names_backend_and_closes_drivers() -> None:
    Recording.closed = []
    app = Application(name="boot-fails")
    registry = recording_registry(fail=True)
    app.add_provider(StorageProvider(recording_config(), registry=registry))
    with pytest.raises(StorageBootError) as exc:
        await app.start()
    assert "b:" in exc.value.message
    assert "disk on fire" in exc.value.message
    assert sorted(Recording.closed) == ["a", "b", "c"]


async def test_unknown_driver_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid drivers: local, memory, s3, r2, gcs, azure"):
        NamedStorageConfig(name="x", driver="ftp")
    with pytest.raises(StorageConfigurationError, match="unknown driver 'ftp'"):
        DriverRegistry().factory("ftp")


# --------------------------------------------------------------------- health


class Unhealthy(MemoryDriver):
    async def _ping(self) -> dict[str, Any]:
        raise ConnectionError("connection refused")


async def test_health_reports_worst_status_with_details(running: list[Application]) -> None:
    registry = DriverRegistry()
    registry.register("unhealthy", lambda e, c: Unhealthy(name=e.name))
    provider = StorageProvider(two_backends(), registry=registry)
    app = await start(running, app_with(providers=[provider]))
    healthy = await provider.health_check()
    assert healthy.status == HealthStatus.HEALTHY
    assert set(healthy.details or {}) == {"backends", "events"}
    assert set((healthy.details or {})["backends"]) == {"avatars", "exports"}
    provider.drivers["exports"] = Unhealthy(name="exports")
    result = await provider.health_check(timeout=1)
    assert result.status == HealthStatus.UNHEALTHY
    assert "exports" in (result.message or "")
    backends = (result.details or {})["backends"]
    assert backends["exports"]["status"] == "unhealthy"
    assert "connection refused" in backends["exports"]["error"]
    assert backends["avatars"]["status"] == "healthy"
    aggregate = await app.health_check()
    assert aggregate.status == HealthStatus.UNHEALTHY


async def test_health_backends_named_events_and_kv_keep_their_own_details(
        running: list[Application], tmp_path: Path) -> None:
    config = StorageConfig(
        backends=[NamedStorageConfig(name="events", driver="memory", primary=True),
                  NamedStorageConfig(name="kv", driver="local",
                                     local=StorageLocalConfig(root_dir=str(tmp_path / "files")))],
        kv=StorageKVConfig(driver="memory"))
    provider = StorageProvider(config)
    await start(running, app_with(providers=[provider]))
    result = await provider.health_check()
    assert result.status == HealthStatus.HEALTHY
    details = result.details or {}
    assert set(details) == {"backends", "events", "kv"}
    assert set(details["backends"]) == {"events", "kv"}
    assert details["backends"]["events"]["status"] == "healthy"
    assert details["backends"]["kv"]["root"] == str(tmp_path / "files")
    assert "pending" in details["events"]
    assert details["kv"]["storage_type"] == "memory"


# --------------------------------------------------------------------- events through DI


class Audit:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, event: Any) -> None:
        self.events.append(event)


async def test_events_reach_bus_subscribers_from_every_binding(
    running: list[Application],
) -> None:
    app = await start(running, app_with(EventsModule.configure(),
                                        StorageModule.configure(two_backends())))
    bus = await app.container.resolve(EventBusProtocol)
    audit = Audit()
    bus.subscribe(FileUploadedEvent, audit)
    bus.subscribe(FileDeletedEvent, audit)
    service = await app.container.resolve(AvatarService)
    await service.store.upload("a.txt", b"1")
    await service.exports.upload("b.txt", b"22")
    await service.exports.delete("b.txt")
    await service.exports.flush_events(5)
    # the bus dispatches each event type on its own channel: order holds within a type
    assert sorted((type(e).__name__, e.backend, e.bucket, e.file_key) for e in audit.events) == [
        ("FileDeletedEvent", "exports", "exports", "b.txt"),
        ("FileUploadedEvent", "avatars", "avatars", "a.txt"),
        ("FileUploadedEvent", "exports", "exports", "b.txt"),
    ]


class PublisherProvider(Provider):
    name = "publisher"

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Any] = []
        self.hooks = HookRegistry("test")
        self.hooked: list[Any] = []

        async def on_stored(**kwargs: Any) -> None:
            self.hooked.append(kwargs["payload"])

        self.hooks.register_action(HOOK_OBJECT_STORED, on_stored)

    async def register(self, container: Any) -> None:
        outer = self

        class Publisher:
            async def publish(self, event: Any) -> None:
                outer.published.append(event)

        container.singleton(DomainEventPublisherProtocol, Publisher())
        container.singleton(HookRegistryProtocol, self.hooks)


async def test_publisher_fallback_and_hooks(running: list[Application]) -> None:
    publisher = PublisherProvider()
    app = await start(running, app_with(StorageModule.configure(two_backends()),
                                        providers=[publisher]))
    store = await app.container.resolve(BlobStoreProtocol)
    await store.upload("p.txt", b"abc")
    await store.flush_events(5)
    assert [e.file_key for e in publisher.published] == ["p.txt"]
    assert publisher.hooked == [ObjectStoredHook(bucket="avatars", key="p.txt", size=3,
                                                 content_type="text/plain", backend="avatars")]


async def test_no_bus_means_no_events_and_no_error(running: list[Application]) -> None:
    app = await start(running, app_with(StorageModule.configure(two_backends())))
    store = await app.container.resolve(BlobStoreProtocol)
    assert not store.events.active
    await store.upload("x", b"1")


async def test_slow_subscriber_does_not_slow_uploads(running: list[Application]) -> None:
    app = await start(running, app_with(EventsModule.configure(),
                                        StorageModule.configure(two_backends())))
    bus = await app.container.resolve(EventBusProtocol)

    async def slow(event: Any) -> None:
        await asyncio.sleep(1)

    bus.subscribe(FileUploadedEvent, slow)
    store = await app.container.resolve(BlobStoreProtocol)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(20):
        await store.upload(f"s/{i}", b"x")
    assert loop.time() - started < 0.5  # 20 subscriber calls would take 20 s if awaited


async def test_config_policy_applies_to_every_backend(running: list[Application]) -> None:
    config = two_backends()
    config.service = StorageOperationConfig(allowed_mime_types=["image/*"])
    app = await start(running, app_with(StorageModule.configure(config)))
    for name in ("avatars", "exports"):
        store = await app.container.resolve((BlobStoreProtocol, name))
        await store.upload("ok.png", b"x")
        with pytest.raises(QuotaExceededError):
            await store.upload("no.txt", b"x")


@pytest.mark.parametrize(("name", "backends"), [
    ("application.local.yaml", ["local"]),
    ("application.multi.yaml", ["avatars", "exports", "scratch", "cache"]),
    ("application.emulators.yaml", ["files", "media", "blobs"]),
    ("application.production.yaml", ["files"]),
])
async def test_shipped_config_files_are_valid(
    running: list[Application], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    name: str, backends: list[str],
) -> None:
    source = Path(__file__).parent.parent / "config" / name
    (tmp_path / "application.yaml").write_text(source.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORAGE_BUCKET", "bucket")
    monkeypatch.setenv("STORAGE_KMS_KEY_ID", "arn:aws:kms:eu-west-1:1:key/abc")
    provider = StorageProvider(stub=True)  # validates the section; memory drivers, no services
    await start(running, app_with(providers=[provider]))
    assert list(provider.drivers) == backends
