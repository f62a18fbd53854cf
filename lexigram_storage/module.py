"""StorageModule: what an application imports to get ``BlobStoreProtocol`` injected."""

from __future__ import annotations

from typing import Any

from lexigram.contracts.infra.storage import (
    BlobStoreProtocol,
    StorageBackendProtocol,
    StorageDriverProtocol,
)
from lexigram.di.module import DynamicModule, Module, module

from lexigram_storage.config import StorageConfig
from lexigram_storage.provider import StorageProvider
from lexigram_storage.registry import DriverRegistry

__all__ = ["StorageModule"]

_EXPORTS: list[Any] = [BlobStoreProtocol, StorageDriverProtocol, StorageBackendProtocol,
                       DriverRegistry]


@module(exports=_EXPORTS, is_global=True)
class StorageModule(Module):
    """Object storage (local, memory, S3, R2, GCS, Azure) bound for constructor injection.

    ``@module(imports=[StorageModule.configure(StorageConfig(...))])`` in the application's
    root module; ask for ``store: BlobStoreProtocol`` (the default backend) or
    ``Annotated[BlobStoreProtocol, Named("avatars")]``, and ``kv: StorageBackendProtocol``
    when the configuration has a ``kv`` section. Each call builds fresh provider
    instances, so call it once per application (e.g. inside an app factory).
    """

    @classmethod
    def configure(
        cls, config: StorageConfig | None = None, enable_encryption: bool = False,
    ) -> DynamicModule:
        """Bind the backends of *config*; ``None`` reads the app's ``storage`` section."""
        if config is not None and not isinstance(config, StorageConfig):
            raise TypeError(
                "StorageModule.configure() expects a StorageConfig or None, "
                f"not {type(config).__name__}"
            )
        provider = StorageProvider(config, enable_encryption=enable_encryption)
        return DynamicModule(module=cls, providers=[provider], exports=list(_EXPORTS),
                             is_global=True)

    @classmethod
    def stub(cls, config: StorageConfig | None = None) -> DynamicModule:
        """The same bindings, each backend an isolated in-memory driver (for tests), and an
        ``InMemoryKVStorage`` as ``StorageBackendProtocol`` (with or without a ``kv`` section)."""
        if config is not None and not isinstance(config, StorageConfig):
            raise TypeError(
                f"StorageModule.stub() expects a StorageConfig or None, not {type(config).__name__}"
            )
        provider = StorageProvider(config, stub=True)
        return DynamicModule(module=cls, providers=[provider], exports=list(_EXPORTS),
                             is_global=True)
