"""Configuration: ``StorageConfig`` (pydantic-settings, ``LEX_STORAGE__*``) and per-driver models.

Precedence: explicit keyword values > ``LEX_STORAGE__*`` environment > defaults. When the
provider gets no config it reads the application's ``storage:`` section (YAML, with the
framework's ``LEX_STORAGE__*`` overrides) and validates it with this same model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lexigram_storage.catalogue import BUILTIN_DRIVERS, known_driver_names
from lexigram_storage.errors import StorageConfigurationError
from lexigram_storage.events import Overflow
from lexigram_storage.payload import UploadPolicy

__all__ = [
    "BUILTIN_DRIVERS",
    "EncryptionConfig",
    "NamedStorageConfig",
    "StorageAzureConfig",
    "StorageConfig",
    "StorageDriversConfig",
    "StorageEventsConfig",
    "StorageGCSConfig",
    "StorageKVConfig",
    "StorageLocalConfig",
    "StorageMemoryConfig",
    "StorageNetworkConfig",
    "StorageOperationConfig",
    "StorageR2Config",
    "StorageS3Config",
    "secret_value",
    "settings_from",
]

DriverName = Literal["local", "memory", "s3", "r2", "gcs", "azure"]
KiB = 1024
MiB = 1024 * KiB

_WEAK_SECRETS = frozenset({
    "change-me", "changeme", "change_me", "changeit", "password", "passwd", "secret",
    "minioadmin", "admin", "root", "test", "testing", "example", "default", "dummy",
    "your-secret-key", "secret-key", "secretkey", "access-key", "accesskey", "123456", "xxx",
})


class _Model(BaseModel):
    # hide_input_in_errors: a validation error must never print a secret (input_value=...)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


class StorageMemoryConfig(_Model):
    """``driver: memory``: an isolated in-process store."""

    bucket: str | None = Field(None, description="Store name reported in events (default: backend name).")


class StorageLocalConfig(_Model):
    """``driver: local``: files under ``root_dir``."""

    root_dir: str = Field("./storage", description="Directory holding the objects; created at boot.")
    base_url: str = Field("http://localhost:8000/storage", description="URL prefix for get_url and signed URLs.")
    signing_key: SecretStr | None = Field(None, description="HMAC key for get_presigned_url.")
    fsync: bool = Field(False, description="fsync files and directories before a write returns.")


class EncryptionConfig(_Model):
    """Server-side encryption for S3/R2 uploads and copies."""

    enabled: bool = Field(False, description="Encrypt every stored object server-side.")
    type: Literal["AES256", "aws:kms"] = Field("AES256", description="SSE-S3 (AES256) or SSE-KMS.")
    kms_key_id: str | None = Field(None, description="KMS key id/ARN for type aws:kms.")

    @model_validator(mode="after")
    def _kms_needs_key(self) -> EncryptionConfig:
        if self.enabled and self.type == "aws:kms" and not self.kms_key_id:
            raise ValueError("encryption type 'aws:kms' needs kms_key_id")
        return self


class StorageNetworkConfig(_Model):
    """Timeouts and retries, the same settings on every network driver (S3, R2, GCS, Azure)."""

    connect_timeout: float = Field(10.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(60.0, gt=0, description="Seconds an attempt may make no progress "
                                "(no request-body slice taken, no answer byte) before it fails.")
    max_attempts: int = Field(3, ge=1, le=20, description="Attempts per request, including the first.")


class StorageS3Config(StorageNetworkConfig):
    """``driver: s3``: Amazon S3 or an S3-compatible server."""

    bucket: str = Field(min_length=1, description="Bucket name.")
    region: str | None = Field(None, description="AWS region (default: the SDK's resolution).")
    access_key: str | None = Field(None, description="Omit to use the AWS credential chain.")
    secret_key: SecretStr | None = Field(None, description="Secret access key (with access_key).")
    session_token: SecretStr | None = Field(None, description="Temporary-credential session token.")
    endpoint_url: str | None = Field(None, description="Custom endpoint (MinIO, moto, LocalStack).")
    public_url: str | None = Field(None, description="Custom domain / CDN used by get_url.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket in the host name (virtual) or in the path.")
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        "standard", description="botocore retry mode.")
    checksum_mode: Literal["when_supported", "when_required"] | None = Field(
        None, description="botocore request/response checksums (default: when_supported; "
        "r2: when_required).")
    multipart_threshold: int = Field(8 * MiB, ge=5 * MiB,
                                     description="Uploads at least this big use multipart (bytes).")
    multipart_chunk_size: int = Field(8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB,
                                      description="Part size; grows to stay under 10,000 parts.")
    max_concurrency: int = Field(4, ge=1, le=64, description="Parts uploaded at once.")
    encryption: EncryptionConfig | None = Field(None, description="Server-side encryption.")
    direct_requests: bool = Field(
        True, description="Single PutObject, GetObject, HeadObject and DeleteObject over the "
        "driver's own aiohttp session, signed by the driver (a third of botocore's client CPU); "
        "false: every request through aioboto3. Used only with retry_mode standard, a region "
        "or endpoint_url, and a plain bucket name.")

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> StorageS3Config:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("access_key and secret_key must be given together")
        return self


class StorageR2Config(StorageS3Config):
    """``driver: r2``: Cloudflare R2 (S3 API; endpoint required, region ``auto``)."""

    region: str | None = Field("auto", description="R2 uses 'auto'.")
    account_id: str | None = Field(None, description="Builds the endpoint when endpoint_url is unset.")

    @model_validator(mode="after")
    def _needs_endpoint(self) -> StorageR2Config:
        if not self.endpoint_url:
            if not self.account_id:
                raise ValueError("r2 needs endpoint_url or account_id")
            self.endpoint_url = f"https://{self.account_id}.r2.cloudflarestorage.com"
        return self


class StorageGCSConfig(StorageNetworkConfig):
    """``driver: gcs``: Google Cloud Storage (or fake-gcs-server)."""

    bucket: str = Field(min_length=1, description="Bucket name.")
    project_id: str | None = Field(None, description="Project id (informational; ADC resolves it).")
    credentials_path: str | None = Field(
        None, description="Service-account JSON key file; default: Application Default Credentials.")
    endpoint_url: str | None = Field(
        None, description="API endpoint of an emulator (fake-gcs-server); without credentials_path "
        "its requests carry no credentials. Default: Google.")
    public_url: str | None = Field(None, description="Custom domain / CDN used by get_url.")
    iam_endpoint_url: str | None = Field(
        None, description="IAM Credentials API endpoint that signs URLs (signBlob) for credentials "
        "without a private key. Default: Google.")
    resumable_threshold: int = Field(8 * MiB, ge=1,
                                     description="Uploads at least this big use a resumable upload (bytes).")
    chunk_size: int = Field(16 * MiB, ge=256 * KiB, le=1024 * MiB, multiple_of=256 * KiB,
                            description="Resumable uploads: the chunk (one PUT) of a stream of unknown "
                            "size, and the part in memory while a file or bytes stream in one PUT; "
                            "a multiple of 256 KiB.")
    max_concurrency: int = Field(8, ge=1, le=64,
                                 description="Deletes in flight at once (delete_many, clear).")


class StorageAzureConfig(StorageNetworkConfig):
    """``driver: azure``: Azure Blob Storage (or Azurite).

    Credentials: ``connection_string`` alone, or ``account_name`` with ``account_key``, or
    ``account_name`` alone to authenticate with Entra ID (``DefaultAzureCredential``, from the
    ``azure-identity`` extra)."""

    container: str = Field(min_length=1, description="Blob container name.")
    account_name: str | None = Field(None, description="Storage account name.")
    account_key: SecretStr | None = Field(
        None, description="Storage account key; without it (and without connection_string): Entra ID.")
    connection_string: SecretStr | None = Field(
        None, description="Full connection string (Azurite too): account, key and endpoint.")
    account_url: str | None = Field(None, description="Blob endpoint; default https://<account>.blob.core.windows.net.")
    public_url: str | None = Field(None, description="Custom domain / CDN used by get_url.")
    block_upload_threshold: int = Field(8 * MiB, ge=1 * MiB, le=5000 * MiB,
                                        description="Uploads at least this big are staged as blocks (bytes).")
    block_size: int = Field(8 * MiB, ge=1 * MiB, le=4000 * MiB,
                            description="Block size; grows to stay under 50,000 blocks.")
    max_concurrency: int = Field(4, ge=1, le=64, description="Blocks uploaded at once.")
    download_chunk_size: int = Field(4 * MiB, ge=64 * 1024, le=256 * MiB,
                                     description="Bytes per ranged GET while streaming (bounds a stream's memory).")

    @model_validator(mode="after")
    def _needs_credentials(self) -> StorageAzureConfig:
        if self.connection_string is not None:
            given = [f for f in ("account_name", "account_key", "account_url")
                     if getattr(self, f) is not None]
            if given:
                raise ValueError(f"connection_string already names the account, key and "
                                 f"endpoint: do not also set {', '.join(given)}")
        elif not self.account_name:
            raise ValueError("azure needs connection_string or account_name (+ account_key)")
        return self


class StorageDriversConfig(_Model):
    """Per-driver settings used by ``default_driver`` (``drivers.s3.bucket`` ...)."""

    memory: StorageMemoryConfig = Field(default_factory=StorageMemoryConfig)
    local: StorageLocalConfig = Field(default_factory=StorageLocalConfig)
    s3: StorageS3Config | None = None
    r2: StorageR2Config | None = None
    gcs: StorageGCSConfig | None = None
    azure: StorageAzureConfig | None = None


class StorageOperationConfig(_Model):
    """Upload policy applied by every backend."""

    max_file_size_mb: float | None = Field(None, gt=0, description="Largest upload; none = no limit.")
    allowed_mime_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="MIME patterns (image/*); empty = all.")

    @field_validator("allowed_mime_types", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def policy(self) -> UploadPolicy | None:
        if self.max_file_size_mb is None and not self.allowed_mime_types:
            return None
        limit = None if self.max_file_size_mb is None else int(self.max_file_size_mb * MiB)
        return UploadPolicy(max_bytes=limit, allowed_mime_types=tuple(self.allowed_mime_types))


class StorageEventsConfig(_Model):
    """How the domain events of every backend are queued for the event bus."""

    overflow: Overflow = Field(
        "block", description="When max_pending events are queued: block = the storage call "
        "waits for room (nothing lost); drop = the event is dropped with a warning.")
    max_pending: int = Field(10_000, ge=1, description="Events queued for the bus before "
                             "overflow applies.")
    shutdown_timeout: float = Field(5.0, gt=0, description="Seconds shutdown spends delivering "
                                    "queued events; the rest are logged as undelivered.")


class StorageKVConfig(_Model):
    """Key-value storage: when set, ``StorageBackendProtocol`` is bound (see ``lexigram_storage.kv``)."""

    driver: Literal["memory", "local"] = Field(
        "local", description="local = SQLite database under base_path; memory = in the process.")
    base_path: str = Field("./kv", description="Directory of the local driver's database "
                           "(kv.sqlite3); created at boot.")
    default_ttl: float | None = Field(None, gt=0, description="Seconds a key lives when set() "
                                      "is given no ttl; none = forever.")
    lock_timeout: float = Field(5.0, gt=0, description="Seconds a local write waits while "
                                "another connection or process writes.")
    fsync: bool = Field(False, description="Make every local write durable against power loss "
                        "(slower); off, writes survive a crash of the process.")


class NamedStorageConfig(_Model):
    """One named backend; injected as ``Annotated[BlobStoreProtocol, Named(name)]``."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                      description="Unique backend name; the Named() DI key.")
    driver: str = Field(description="local, memory, s3, r2, gcs, azure, or a registered driver.")
    primary: bool = Field(False, description="Also bound as the unnamed BlobStoreProtocol.")
    memory: StorageMemoryConfig | None = Field(None, description="Settings when driver is memory.")
    local: StorageLocalConfig | None = Field(None, description="Settings when driver is local (required).")
    s3: StorageS3Config | None = Field(None, description="Settings when driver is s3 (required).")
    r2: StorageR2Config | None = Field(None, description="Settings when driver is r2 (required).")
    gcs: StorageGCSConfig | None = Field(None, description="Settings when driver is gcs (required).")
    azure: StorageAzureConfig | None = Field(None, description="Settings when driver is azure (required).")
    options: dict[str, Any] = Field(default_factory=dict, description="Settings for a third-party driver.")

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        names = known_driver_names()
        if value not in names:
            raise ValueError(f"unknown driver {value!r}; valid drivers: {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _block_for_driver(self) -> NamedStorageConfig:
        if self.driver in BUILTIN_DRIVERS and self.driver != "memory" \
                and getattr(self, self.driver) is None:
            raise ValueError(
                f"backend {self.name!r} uses driver {self.driver!r} but has no "
                f"{self.driver!r} block (e.g. {_EXAMPLE_BLOCK[self.driver]})"
            )
        return self

    def driver_config(self) -> BaseModel | dict[str, Any]:
        """The settings block of this backend's driver."""
        if self.driver == "memory":
            return self.memory or StorageMemoryConfig()
        if self.driver in BUILTIN_DRIVERS:
            block: BaseModel = getattr(self, self.driver)
            return block
        return self.options


_EXAMPLE_BLOCK = {
    "local": "local: {root_dir: ./storage/avatars}",
    "s3": "s3: {bucket: my-bucket, region: us-east-1}",
    "r2": "r2: {bucket: my-bucket, account_id: ...}",
    "gcs": "gcs: {bucket: my-bucket}",
    "azure": "azure: {container: my-container, connection_string: ...}",
}


class StorageConfig(BaseSettings):
    """Root storage configuration (env prefix ``LEX_STORAGE__``, nested delimiter ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="LEX_STORAGE__",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    name: str = Field("storage", description="Name of this configuration.")
    enabled: bool = Field(True, description="False binds no backends (only DriverRegistry).")
    default_driver: DriverName = Field(
        "local", description="Driver of the single backend used when `backends` is empty.")
    drivers: StorageDriversConfig = Field(default_factory=StorageDriversConfig,
                                          description="Per-driver settings for default_driver.")
    backends: list[NamedStorageConfig] = Field(default_factory=list,
                                               description="Named backends (JSON list in env).")
    service: StorageOperationConfig = Field(default_factory=StorageOperationConfig,
                                            description="Upload policy for every backend.")
    events: StorageEventsConfig = Field(default_factory=StorageEventsConfig,
                                        description="Event queue policy for every backend.")
    kv: StorageKVConfig | None = Field(None, description="Key-value storage; none = "
                                       "StorageBackendProtocol is not bound (stub() binds an "
                                       "in-memory one).")
    health_check_timeout: float = Field(5.0, gt=0, description="Seconds for boot and health probes.")
    env: str = Field(default_factory=lambda: os.environ.get("LEX_ENV", "development"),
                     description="Deployment environment; 'production' (or LEX_ENV) rejects weak secrets.")

    @model_validator(mode="after")
    def _check_backends(self) -> StorageConfig:
        seen: dict[str, int] = {}
        for index, backend in enumerate(self.backends):
            if backend.name in seen:
                raise ValueError(
                    f"duplicate backend name {backend.name!r} (backends[{seen[backend.name]}] "
                    f"and backends[{index}])"
                )
            seen[backend.name] = index
        primaries = [b.name for b in self.backends if b.primary]
        if len(primaries) > 1:
            raise ValueError(f"more than one primary backend: {primaries}; mark only one primary")
        if not self.backends and self.default_driver not in ("memory", "local") \
                and getattr(self.drivers, self.default_driver) is None:
            raise ValueError(
                f"default_driver is {self.default_driver!r} but drivers.{self.default_driver} "
                f"is not set (e.g. LEX_STORAGE__DRIVERS__{self.default_driver.upper()}__BUCKET)"
            )
        return self

    @model_validator(mode="after")
    def validate_production_security(self) -> StorageConfig:
        """With ``LEX_ENV=production``, reject weak placeholder credentials anywhere."""
        if os.environ.get("LEX_ENV", self.env).strip().lower() != "production":
            return self
        blocks: list[tuple[str, BaseModel | None]] = [
            (f"drivers.{field}", getattr(self.drivers, field))
            for field in StorageDriversConfig.model_fields
        ]
        for i, backend in enumerate(self.backends):
            blocks += [(f"backends[{i}].{field}", getattr(backend, field))
                       for field in BUILTIN_DRIVERS]
        for where, block in blocks:
            for field, value in _secrets(block):
                if value.strip().lower() in _WEAK_SECRETS or not value.strip():
                    raise ValueError(
                        f"{where}.{field} is a placeholder credential; set a real value "
                        "(rejected because LEX_ENV=production)"
                    )
        return self

    @classmethod
    def from_named(cls, entry: NamedStorageConfig) -> StorageConfig:
        """A single-backend config with *entry*'s driver block under ``drivers``."""
        drivers: dict[str, Any] = {}
        block = entry.driver_config()
        if entry.driver in BUILTIN_DRIVERS:
            drivers[entry.driver] = block
        return cls(name=entry.name, default_driver=entry.driver, drivers=drivers)

    def named_backends(self) -> list[NamedStorageConfig]:
        """The backends to build: ``backends``, or one entry named after ``default_driver``."""
        if self.backends:
            return list(self.backends)
        block = getattr(self.drivers, self.default_driver)
        return [NamedStorageConfig(name=self.default_driver, driver=self.default_driver,
                                   primary=True, **{self.default_driver: block})]

    def default_backend(self) -> str:
        """The name bound as the unnamed ``BlobStoreProtocol``: primary, else the first."""
        backends = self.named_backends()
        return next((b.name for b in backends if b.primary), backends[0].name)


def _secrets(block: BaseModel | None) -> list[tuple[str, str]]:
    if block is None:
        return []
    found: list[tuple[str, str]] = []
    for field in type(block).model_fields:
        value = getattr(block, field)
        if isinstance(value, SecretStr):
            found.append((field, value.get_secret_value()))
        elif field == "access_key" and isinstance(value, str):
            found.append((field, value))
    return found


_Block = TypeVar("_Block", bound=BaseModel)


def secret_value(value: str | SecretStr | None) -> str | None:
    """The plain text of a secret setting (``None`` stays ``None``)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def settings_from(model: type[_Block], arguments: Mapping[str, Any], *, backend: str | None,
                  more: Mapping[str, Any] | None = None) -> _Block:
    """Validate a driver's constructor arguments with its settings model, so a driver built
    in code and one built from configuration pass the same checks; a failure is a
    ``StorageConfigurationError`` listing every problem.

    *arguments* may be the constructor's ``locals()``: only the entries naming a field of
    *model* count, and ``None`` means unset (the model's default applies, e.g. region "auto" on
    R2). *more* (the constructor's ``**kwargs``) must hold fields of *model* only."""
    values = {k: v for k, v in arguments.items() if k in model.model_fields and v is not None}
    try:
        return model.model_validate({**values, **(more or {})})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or model.__name__}: {error['msg']}"
            for error in exc.errors())
        raise StorageConfigurationError(problems, backend=backend, cause=exc) from exc
