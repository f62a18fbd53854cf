"""Azure Blob Storage driver (azure-storage-blob, async, over aiohttp).

One ``BlobServiceClient`` per driver, opened at ``prepare()`` or on first use and closed by
``close()``; its retries and timeouts are the shared network settings (``max_attempts``,
``connect_timeout``, ``read_timeout``), not the SDK's (about 81 s of retries on a dead server).
Uploads go through the shared upload engine: below ``block_upload_threshold`` one ``Put Blob``;
above it (and for streams that reach it) staged blocks (``Put Block``) committed by one
``Put Block List``, at most ``max_concurrency`` blocks in flight. Block ids are unique per upload,
so two uploads to one key never mix their blocks. Nothing is visible before the commit, and a
failed or cancelled upload commits nothing: its staged blocks are never listed and the service
discards them (at the key's next commit, or after a week), so the previous blob is intact.

``FileInfo.etag`` is the hex SHA-256 of the content, as on every driver. Azure's own ETag is an
opaque version string, so the digest is stored in the metadata entry ``lexigram_sha256`` (hidden
from the user metadata): a ``Put Blob`` sends it with the body, and a block upload sets it in the
``Put Block List`` that commits the blocks, when the stream has ended and its digest is known.

Metadata names: Azure requires C# identifiers and keeps the case it was given; the common rule
(``payload.py``: ``[a-z_][a-z0-9_]*``, stored lower-case) is a subset of it, so names round-trip
unchanged (a blob written by other tools with upper-case names reads back lower-cased).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote

from lexigram.contracts.infra.storage import StorageError
from pydantic import SecretStr

from lexigram_storage.capabilities import Capability
from lexigram_storage.config import StorageAzureConfig, secret_value, settings_from
from lexigram_storage.drivers._http import idle_bounded_body, retry_delay
from lexigram_storage.drivers._parts import PartRules, upload
from lexigram_storage.drivers.base import BaseDriver, await_to_end, create_only_conflict
from lexigram_storage.errors import (
    PreconditionFailedError,
    StorageBucketNotFoundError,
    StorageConfigurationError,
    StorageFileNotFoundError,
    StoragePermissionError,
    StorageRequestRejectedError,
    StorageUnavailableError,
    unsupported,
)
from lexigram_storage.events import StorageEvents
from lexigram_storage.models import DirListing, ObjectInfo
from lexigram_storage.payload import DEFAULT_CONTENT_TYPE, READ_CHUNK_SIZE, Payload, UploadPolicy

try:
    import aiohttp
    from azure.core import MatchConditions
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.storage.blob import (
        BlobBlock,
        BlobProperties,
        BlobSasPermissions,
        ContentSettings,
        generate_blob_sas,
    )
    from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'The azure driver needs azure-storage-blob and aiohttp: pip install "lexigram_storage[azure]"',
        name=exc.name,
    ) from exc

__all__ = ["DIGEST_METADATA_KEY", "AzureDriver", "map_azure_error"]

MiB = 1024 * 1024
MAX_BLOCK_SIZE = 4000 * MiB
MAX_BLOCKS = 50_000
#: the largest block blob (50,000 blocks of 4000 MiB): ranges are clamped to it
MAX_BLOB_SIZE = MAX_BLOCKS * MAX_BLOCK_SIZE
#: the metadata entry holding the hex SHA-256 of the content (a C# identifier: no "-")
DIGEST_METADATA_KEY = "lexigram_sha256"
#: blobs per batch delete request (the service's limit)
BATCH_DELETE = 256
_IDENTITY_HINT = 'pip install "lexigram_storage[azure-identity]"'
_CONFLICT = frozenset({"BlobAlreadyExists", "ConditionNotMet", "SourceConditionNotMet",
                       "TargetConditionNotMet"})
_UNAVAILABLE = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})
_PRESIGN_GET_OPTIONS = {
    "response_content_disposition": "content_disposition",
    "response_content_type": "content_type",
    "response_cache_control": "cache_control",
}


def map_azure_error(exc: BaseException, backend: str, container: str, key: str | None
                    ) -> StorageError | None:
    """The one translation of Azure SDK and HTTP-client errors (``None``: not one of them).

    ============================================  =====================================
    server answer / client failure                error
    ============================================  =====================================
    ``ContainerNotFound``                          ``StorageBucketNotFoundError``
    404 (``BlobNotFound``)                         ``StorageFileNotFoundError``
    401, 403 (bad key, bad or expired SAS,         ``StoragePermissionError``
    missing role); no usable Entra ID credential
    409 ``BlobAlreadyExists``, 412                 ``PreconditionFailedError``
    ``ConditionNotMet`` (not the lease codes)
    5xx, 408, 429, ``ServerBusy``,                 ``StorageUnavailableError``
    ``OperationTimedOut``; connection refused,
    reset or closed, connect and read timeouts
    any other 4xx (``InvalidMetadata``,            ``StorageRequestRejectedError``
    ``LeaseIdMissing``, ``InvalidBlockList``...)
    ============================================  =====================================
    """
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        status = int(exc.status_code)
        code = _code(exc)
        text = f"{code or status}: {_first_line(exc)}"
        details = {"status": status, "error_code": code}
        if code == "ContainerNotFound":
            return StorageBucketNotFoundError(f"container {container!r} does not exist",
                                              backend=backend, key=key, details=details, cause=exc)
        if status == 404:
            return StorageFileNotFoundError(backend=backend, key=key, details=details, cause=exc)
        if status in (401, 403):
            return StoragePermissionError(text, backend=backend, key=key, details=details,
                                          cause=exc)
        if code in _CONFLICT or (status == 412 and not code.startswith("Lease")):
            return PreconditionFailedError(text, backend=backend, key=key, details=details,
                                           cause=exc)
        if code in _UNAVAILABLE or status >= 500 or status in (408, 429):
            return StorageUnavailableError(text, backend=backend, key=key, details=details,
                                           cause=exc)
        if status >= 400:
            return StorageRequestRejectedError(text, backend=backend, key=key, details=details,
                                               cause=exc)
        return None
    if isinstance(exc, ClientAuthenticationError):  # a credential that could not get a token
        return StoragePermissionError(
            f"no usable Azure credential: {_first_line(exc)}", backend=backend, key=key,
            cause=exc, hint="Set account_key or connection_string, or configure the Entra ID "
                            "credential chain (DefaultAzureCredential).")
    if isinstance(exc, ServiceRequestError | ServiceResponseError | aiohttp.ClientConnectionError
                  | aiohttp.ClientPayloadError | TimeoutError | ConnectionError):
        return StorageUnavailableError(f"{type(exc).__name__}: {_first_line(exc)}",
                                       backend=backend, key=key, cause=exc)
    return None


def _code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _first_line(exc: BaseException) -> str:
    message = str(getattr(exc, "message", None) or exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__


def _connection_fields(connection_string: str) -> dict[str, str]:
    """``Key=value;...`` pairs of a connection string (values may contain ``=``)."""
    fields: dict[str, str] = {}
    for part in connection_string.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            fields[name.strip().lower()] = value.strip()
    return fields


class _Retry(ExponentialRetry):
    """The shared retry rule: ``max_attempts`` attempts in all (connection failures, timeouts,
    5xx and 408), waiting a random time up to 1, 2, 4 ... seconds (at most 20) between them, as
    botocore's standard mode does for the S3 driver."""

    def __init__(self, max_attempts: int) -> None:
        retries = max_attempts - 1
        super().__init__(retry_total=retries, retry_connect=retries, retry_read=retries,
                         retry_status=retries)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return retry_delay(int(settings["count"]))


class AzureDriver(BaseDriver):
    """Blobs in an Azure Blob Storage container (or Azurite).

    Args:
        account_name / account_key: the storage account and its key; with ``account_name``
            alone the driver authenticates with Entra ID (``DefaultAzureCredential``, or
            ``credential``), which needs the ``azure-identity`` extra.
        container: the blob container.
        connection_string: instead of the account settings (Azurite's works as it is).
        account_url: the blob endpoint (default ``https://<account>.blob.core.windows.net``).
        public_url: custom domain / CDN used by ``get_url``.
        connect_timeout / read_timeout: seconds per attempt; max_attempts: attempts per request.
        block_upload_threshold: uploads of at least this many bytes are staged as blocks.
        block_size: the block size (grows to stay under 50,000 blocks).
        max_concurrency: blocks in flight at once (and ranged GETs of ``download``).
        download_chunk_size: bytes per ranged GET of ``stream``.
        credential: an async Entra ID credential (``azure.identity.aio``) to use instead of
            ``DefaultAzureCredential``; the caller closes it.
    """

    driver: ClassVar[str] = "azure"
    #: a commit discards the blob's other uncommitted blocks: of large uploads racing to one
    #: key, the losers fail with PreconditionFailedError (nothing stored) instead of being
    #: overwritten in turn
    capabilities = BaseDriver.capabilities - {Capability.CONCURRENT_LARGE_WRITES}
    config_model: ClassVar[type[StorageAzureConfig]] = StorageAzureConfig

    def __init__(
        self,
        account_name: str | None = None,
        account_key: str | SecretStr | None = None,
        container: str | None = None,
        *,
        connection_string: str | SecretStr | None = None,
        account_url: str | None = None,
        public_url: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        block_upload_threshold: int = 8 * MiB,
        block_size: int = 8 * MiB,
        max_concurrency: int = 4,
        download_chunk_size: int = 4 * MiB,
        credential: Any = None,
        name: str | None = None,
        policy: UploadPolicy | None = None,
        events: StorageEvents | None = None,
        **more: Any,
    ) -> None:
        super().__init__(name=name, policy=policy, events=events)
        # the arguments pass the configuration model's checks: the same rules as a config file
        settings = settings_from(self.config_model, locals(), more=more, backend=self.name)
        self.settings = settings
        self._container_name = settings.container
        self._connection_string = settings.connection_string
        fields = _connection_fields(secret_value(self._connection_string) or "")
        self.account_name = settings.account_name or fields.get("accountname")
        key = fields.get("accountkey")
        self._account_key = settings.account_key or (SecretStr(key) if key else None)
        self.account_url = (settings.account_url or fields.get("blobendpoint")
                            or self._default_account_url(fields)).rstrip("/")
        self.public_url = settings.public_url.rstrip("/") if settings.public_url else None
        self.connect_timeout = settings.connect_timeout
        self.read_timeout = settings.read_timeout
        self.max_attempts = settings.max_attempts
        self.block_upload_threshold = settings.block_upload_threshold
        self.block_size = settings.block_size
        self.max_concurrency = settings.max_concurrency
        self.download_chunk_size = settings.download_chunk_size
        if credential is not None and (self._account_key or self._connection_string):
            raise StorageConfigurationError("give credential, account_key or connection_string, "
                                            "not several", backend=self.name)
        self._credential = credential
        self._default_credential: Any = None
        if credential is None and self._account_key is None and self._connection_string is None:
            self._default_credential = _default_credential_class(self.name)
        self._owned_credential: Any = None
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        self._client_lock: asyncio.Lock | None = None
        self._delegation: tuple[Any, datetime] | None = None

    def _default_account_url(self, fields: dict[str, str]) -> str:
        protocol = fields.get("defaultendpointsprotocol", "https")
        suffix = fields.get("endpointsuffix", "core.windows.net")
        return f"{protocol}://{self.account_name}.blob.{suffix}"

    @property
    def bucket(self) -> str:
        return self._container_name

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} name={self.name!r} container={self._container_name!r} "
                f"account_url={self.account_url!r}>")

    # ------------------------------------------------------------------ client lifecycle

    def _new_client(self) -> BlobServiceClient:
        """The SDK client: the shared retries and timeouts, and bounded transfer sizes (a
        ``Put Blob`` never exceeds the block threshold; streams read ``download_chunk_size`` per
        ranged GET instead of the SDK's 32 MiB first read)."""
        options: dict[str, Any] = {
            "retry_policy": _Retry(self.max_attempts),
            "transport": _IdleBoundedTransport(self.read_timeout,
                                               connection_timeout=self.connect_timeout,
                                               read_timeout=self.read_timeout),
            "connection_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "max_single_put_size": self.block_upload_threshold,
            "max_block_size": self.block_size,
            "max_single_get_size": self.download_chunk_size,
            "max_chunk_get_size": self.download_chunk_size,
        }
        if self._connection_string is not None:
            return BlobServiceClient.from_connection_string(
                self._connection_string.get_secret_value(), **options)
        credential: Any
        if self._account_key is not None:
            credential = AzureNamedKeyCredential(str(self.account_name),
                                                 self._account_key.get_secret_value())
        elif self._credential is not None:
            credential = self._credential
        else:
            credential = self._owned_credential = self._default_credential()
        return BlobServiceClient(self.account_url, credential=credential, **options)

    async def _client(self) -> ContainerClient:
        container = self._container
        if container is not None:
            return container
        if self._closed:
            raise StorageUnavailableError("the driver is closed", backend=self.name)
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._container is None:
                service = self._new_client()
                await service.__aenter__()
                self._service = service
                self._container = service.get_container_client(self._container_name)
            return self._container

    async def prepare(self) -> None:
        await self._client()

    async def _close(self) -> None:
        service, self._service, self._container = self._service, None, None
        credential, self._owned_credential = self._owned_credential, None
        if service is not None:
            await service.close()
        if credential is not None:
            await credential.close()

    # ------------------------------------------------------------------ errors

    def _map_error(self, exc: BaseException, key: str | None) -> StorageError | None:
        return map_azure_error(exc, self.name, self._container_name, key)

    # ------------------------------------------------------------------ object info

    def _object_info(self, props: BlobProperties) -> ObjectInfo:
        metadata = {k.lower(): v for k, v in (props.metadata or {}).items()}
        digest = metadata.pop(DIGEST_METADATA_KEY, None)
        settings = props.content_settings
        modified = props.last_modified
        return ObjectInfo(
            path=str(props.name),
            size=int(props.size or 0),
            content_type=settings.content_type or DEFAULT_CONTENT_TYPE,
            last_modified=modified.astimezone(UTC) if modified else datetime.now(UTC),
            created_at=props.creation_time.astimezone(UTC) if props.creation_time else None,
            etag=digest or str(props.etag or "").strip('"') or None,
            metadata=metadata,
            cache_control=settings.cache_control or None,
        )

    @staticmethod
    def _write_settings(payload: Payload) -> tuple[ContentSettings, dict[str, str]]:
        """Content settings and metadata of a write; the payload has ended, so its digest is
        known."""
        request = payload.request
        settings = ContentSettings(content_type=request.content_type,
                                   cache_control=request.cache_control)
        return settings, {**request.metadata, DIGEST_METADATA_KEY: payload.etag}

    # ------------------------------------------------------------------ writing

    @property
    def part_rules(self) -> PartRules:
        """How uploads are cut into blocks (the shared upload engine's settings)."""
        return PartRules(threshold=self.block_upload_threshold, part_size=self.block_size,
                         max_concurrency=self.max_concurrency, max_part_size=MAX_BLOCK_SIZE,
                         max_parts=MAX_BLOCKS,
                         abort_timeout=self.connect_timeout + self.read_timeout, prehash=False,
                         file_read_size=READ_CHUNK_SIZE)

    async def _write(self, key: str, payload: Payload) -> ObjectInfo:
        blob = (await self._client()).get_blob_client(key)
        create_only = payload.request.create_only

        async def put_whole(body: bytes) -> dict[str, Any]:
            settings, metadata = self._write_settings(payload)
            try:
                # the commit: once sent the service may store the blob, so the call waits for
                # the answer even if cancelled (the cancellation guarantee)
                response: dict[str, Any] = await await_to_end(blob.upload_blob(
                    body, length=len(body), overwrite=not create_only, max_concurrency=1,
                    content_settings=settings, metadata=metadata))
            except HttpResponseError as exc:
                if create_only and _code(exc) in _CONFLICT:
                    raise create_only_conflict(self.name, key) from exc
                raise
            return response

        response = await upload(payload, self.part_rules, put_whole,
                                _Blocks(self, blob, key, payload))
        request = payload.request
        modified = response.get("last_modified")
        return ObjectInfo(
            path=key, size=payload.size, content_type=request.content_type,
            last_modified=modified.astimezone(UTC) if isinstance(modified, datetime)
            else datetime.now(UTC),
            etag=payload.etag, metadata=dict(request.metadata),
            cache_control=request.cache_control,
        )

    # ------------------------------------------------------------------ reading

    async def _read(self, key: str, offset: int, length: int | None, chunk_size: int
                    ) -> AsyncIterator[bytes]:
        blob = (await self._client()).get_blob_client(key)
        if length is not None and offset + length > MAX_BLOB_SIZE:
            length = None  # to the end: no blob is bigger
        if length == 0 or offset >= MAX_BLOB_SIZE:
            if await self._head(key) is None:
                raise StorageFileNotFoundError(backend=self.name, key=key)
            return
        try:
            # one ranged GET of download_chunk_size bytes at a time
            downloader = await blob.download_blob(offset=offset if offset or length else None,
                                                  length=length, max_concurrency=1)
        except HttpResponseError as exc:
            if exc.status_code == 416:
                return  # the blob exists; the range starts at or past its end
            raise
        async for data in downloader.chunks():
            if len(data) <= chunk_size:
                if data:
                    yield data
                continue
            view = memoryview(data)
            for start in range(0, len(data), chunk_size):
                yield bytes(view[start:start + chunk_size])

    async def _read_all(self, key: str) -> bytes:
        blob = (await self._client()).get_blob_client(key)
        downloader = await blob.download_blob(max_concurrency=self.max_concurrency)
        data: bytes = await downloader.readall()
        return data

    async def _head(self, key: str) -> ObjectInfo | None:
        blob = (await self._client()).get_blob_client(key)
        try:
            props = await blob.get_blob_properties()
        except ResourceNotFoundError as exc:
            if _code(exc) == "ContainerNotFound":
                raise
            return None
        return self._object_info(props)

    # ------------------------------------------------------------------ deleting

    async def _delete(self, key: str) -> bool:
        blob = (await self._client()).get_blob_client(key)
        try:
            await blob.delete_blob(delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if _code(exc) == "ContainerNotFound":
                raise
            return False
        return True

    async def _delete_many(self, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Batch deletes of at most 256 blobs; a missing blob counts as deleted, any other
        per-blob failure is reported."""
        container = await self._client()
        failed: dict[str, str] = {}
        for start in range(0, len(keys), BATCH_DELETE):
            batch = keys[start:start + BATCH_DELETE]
            responses = await container.delete_blobs(*batch, raise_on_any_failure=False,
                                                     delete_snapshots="include")
            answers = [response async for response in responses]
            for key, response in zip(batch, answers, strict=True):
                code = str(response.headers.get("x-ms-error-code") or "")
                if response.status_code < 300 or code == "BlobNotFound":
                    continue
                failed[key] = f"{code or response.status_code}: {response.reason or ''}".strip()
        return [k for k in keys if k not in failed], failed

    # ------------------------------------------------------------------ listing

    async def _list(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        container = await self._client()
        async for props in container.list_blobs(name_starts_with=prefix or None,
                                                include=["metadata"],
                                                start_from=_start_from(prefix, start_after)):
            if start_after is None or props.name > start_after:
                yield self._object_info(props)

    async def _list_keys(self, prefix: str, start_after: str | None) -> AsyncIterator[str]:
        """Names only: the listing without metadata."""
        container = await self._client()
        async for name in container.list_blob_names(name_starts_with=prefix or None,
                                                    start_from=_start_from(prefix, start_after)):
            if start_after is None or name > start_after:
                yield name

    async def _list_dir(self, prefix: str, delimiter: str) -> DirListing:
        container = await self._client()
        files: list[ObjectInfo] = []
        prefixes: list[str] = []
        async for item in container.walk_blobs(name_starts_with=prefix or None,
                                               include=["metadata"], delimiter=delimiter):
            if isinstance(item, BlobProperties):
                files.append(self._object_info(item))
            else:
                prefixes.append(str(item.name))
        return DirListing(files=files, prefixes=sorted(set(prefixes)))

    # ------------------------------------------------------------------ copy

    async def _copy(self, src: str, dst: str) -> ObjectInfo:
        """A server-side copy within the account (``Copy Blob``, awaited to its end), keeping
        content settings and metadata (the digest too); guarded by the source's ETag, so the
        copy is the version whose info is returned."""
        container = await self._client()
        source = container.get_blob_client(src)
        props = await source.get_blob_properties()  # BlobNotFound: the source is missing
        target = container.get_blob_client(dst)
        modified = await await_to_end(self._copy_to_end(source, target, str(props.etag)))
        head = self._object_info(props)
        return ObjectInfo(path=dst, size=head.size, content_type=head.content_type,
                          last_modified=modified, etag=head.etag, metadata=head.metadata,
                          cache_control=head.cache_control)

    async def _copy_to_end(self, source: BlobClient, target: BlobClient, etag: str) -> datetime:
        started = await target.start_copy_from_url(
            source.url, source_etag=etag, source_match_condition=MatchConditions.IfNotModified)
        status, copy_id = started.get("copy_status"), started.get("copy_id")
        modified = started.get("last_modified")
        delay = 0.05
        while status == "pending":
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            props = await target.get_blob_properties()
            if props.copy.id != copy_id:
                break  # another write replaced the target meanwhile: the copy is over
            status, modified = props.copy.status, props.last_modified
        if status not in ("success", "pending"):
            raise StorageError(f"{self.name}: copy of {source.blob_name!r} to "
                               f"{target.blob_name!r} ended with status {status!r}")
        return modified.astimezone(UTC) if isinstance(modified, datetime) else datetime.now(UTC)

    # ------------------------------------------------------------------ URLs and health

    def _url(self, key: str) -> str:
        path = quote(key, safe="/~")
        if self.public_url:
            return f"{self.public_url}/{path}"
        return f"{self.account_url}/{quote(self._container_name, safe='')}/{path}"

    async def _presign(self, key: str, expires_in: timedelta, method: str,
                       options: dict[str, Any]) -> str:
        """A SAS URL: read permission for GET; create + write for PUT (the client must send
        ``x-ms-blob-type: BlockBlob``). Signed with the account key, else with a user delegation
        key (Entra ID). The expiry is rounded up to the second."""
        allowed = _PRESIGN_GET_OPTIONS if method == "GET" else {}
        unknown = set(options) - set(allowed)
        if unknown:
            raise unsupported(self.name, f"get_presigned_url option(s) {sorted(unknown)}",
                              hint=f"{method} URLs accept: {sorted(allowed) or 'no options'}")
        overrides = {allowed[k]: v for k, v in options.items() if v is not None}
        now = datetime.now(UTC)
        expiry = now + expires_in
        if expiry.microsecond:
            expiry = expiry.replace(microsecond=0) + timedelta(seconds=1)
        permission = (BlobSasPermissions(read=True) if method == "GET"
                      else BlobSasPermissions(create=True, write=True))
        container = await self._client()
        signing: dict[str, Any]
        if self._account_key is not None:
            signing = {"account_key": self._account_key.get_secret_value()}
        elif self._connection_string is None:
            signing = {"user_delegation_key": await self._delegation_key(now, expiry)}
        else:
            raise unsupported(self.name, "get_presigned_url with a connection string that holds "
                              "no account key")
        token = generate_blob_sas(str(self.account_name), self._container_name, key,
                                  permission=permission, expiry=expiry, **signing, **overrides)
        return f"{container.get_blob_client(key).url}?{token}"

    async def _delegation_key(self, now: datetime, expiry: datetime) -> Any:
        """A user delegation key valid until *expiry* (asked for 7 days, then reused)."""
        cached = self._delegation
        if cached is not None and cached[1] >= expiry:
            return cached[0]
        assert self._service is not None  # _presign opened the client
        until = now + timedelta(days=7)
        key = await self._service.get_user_delegation_key(now - timedelta(minutes=5), until)
        self._delegation = (key, until)
        return key

    async def _ping(self) -> dict[str, Any]:
        container = await self._client()
        await container.get_container_properties()
        return {"endpoint": self.account_url, "account": self.account_name}


class _Blocks:
    """One block upload: the upload engine's part sink. ``start`` and ``abort`` call nothing
    (staged blocks are invisible until committed and discarded by the service); ``complete``
    commits the blocks with the content settings and the metadata, digest included."""

    def __init__(self, driver: AzureDriver, blob: BlobClient, key: str, payload: Payload) -> None:
        self.driver = driver
        self.blob = blob
        self.key = key
        self.payload = payload
        # unique per upload, so concurrent uploads to one key never commit each other's blocks
        self.upload_id = uuid.uuid4().hex

    async def start(self, digest: str | None) -> None:
        return None

    async def put_part(self, number: int, pieces: list[bytes | memoryview]) -> str:
        length = sum(len(piece) for piece in pieces)
        block_id = f"{self.upload_id}{number:06d}"  # fixed width; the SDK base64-encodes it
        # the SDK hands any async iterable to aiohttp as it is (its stub names sync types only)
        body: Any = _BlockBody(pieces)
        try:
            await self.blob.stage_block(block_id, body, length=length)
        finally:
            # the request objects holding the body can outlive the call in reference cycles
            # until the garbage collector runs: the block's bytes are released now
            pieces.clear()
        return block_id

    async def complete(self, parts: list[tuple[int, str]], create_only: bool) -> dict[str, Any]:
        settings, metadata = self.driver._write_settings(self.payload)
        try:
            response: dict[str, Any] = await self.blob.commit_block_list(
                [BlobBlock(block_id) for _, block_id in parts], content_settings=settings,
                metadata=metadata, match_condition=MatchConditions.IfMissing if create_only else None)
        except HttpResponseError as exc:
            code = _code(exc)
            if create_only and code in _CONFLICT:
                raise create_only_conflict(self.driver.name, self.key) from exc
            if code == "InvalidBlockList":
                raise PreconditionFailedError(
                    "another write to this key committed while this upload staged its blocks "
                    "(Azure then discards the blocks not yet committed); nothing was stored by "
                    "this upload", backend=self.driver.name, key=self.key,
                    details={"status": exc.status_code, "error_code": code}, cause=exc) from exc
            raise
        return response

    async def abort(self) -> None:
        return None

    async def record_digest(self, result: dict[str, Any], digest: str) -> None:
        return None  # complete() stored it


class _IdleBoundedTransport(AioHttpTransport):  # type: ignore[misc]
    """azure-core's aiohttp transport with every request body under the shared idle deadline
    (``drivers/_http.py``): a server that stops reading fails the request within
    ``read_timeout`` instead of hanging it once the body exceeds the socket buffers."""

    def __init__(self, idle_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._idle_timeout = idle_timeout

    def _get_request_data(self, request: Any) -> Any:
        data = super()._get_request_data(request)
        if isinstance(data, _BlockBody):
            data = data.pieces  # sent as they are, in slices: nothing copied
        return idle_bounded_body(data, self._idle_timeout)


class _BlockBody:
    """A block's bytes sent as the pieces they arrived in, never copied: an async iterable body,
    which aiohttp writes slice by slice (at most 256 KiB each), waiting for the socket in
    between. Given one big bytes object, asyncio's transport would keep a second copy of what
    the socket did not take at once. Every attempt (a retry too) starts from the first byte."""

    SLICE = 256 * 1024

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        for piece in self.pieces:
            view = memoryview(piece)
            for start in range(0, len(view), self.SLICE):
                yield view[start:start + self.SLICE]


def _start_from(prefix: str, start_after: str | None) -> str | None:
    """The listing's ``startFrom`` (inclusive, so ``start_after`` itself is filtered out by the
    caller, which also keeps the rule exact where a server ignores the parameter)."""
    return start_after if start_after is not None and start_after > prefix else None


def _default_credential_class(backend: str) -> Any:
    """``DefaultAzureCredential`` (async), or a configuration error naming the extra."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError as exc:
        raise StorageConfigurationError(
            "without account_key or connection_string the azure driver authenticates with "
            "Entra ID, which needs azure-identity", backend=backend, hint=_IDENTITY_HINT,
            cause=exc) from exc
    return DefaultAzureCredential
