"""Amazon S3 and Cloudflare R2 drivers (aioboto3).

One aioboto3 client per driver, opened at ``prepare()`` or on first use and closed by
``close()``. A single PutObject, the GetObject of ``download()``, HeadObject and DeleteObject go
over the driver's own aiohttp session instead, signed by the driver (``drivers/_s3_direct.py``:
a third of botocore's client CPU per request), unless ``direct_requests=False``.

Uploads stream: below ``multipart_threshold`` one ``PutObject``; above it a
multipart upload that cuts incoming chunks into parts of at least 5 MiB (an OS file is read a
part at a time in a worker thread), grows the part size to stay under 10,000 parts and keeps at
most ``max_concurrency`` parts in flight, each copied once into the buffer that is sent. Any
failure or cancellation aborts the multipart upload. ``clear()`` deletes from a keys-only
listing; presigned PUT URLs sign the encryption headers (``presigned_put_headers``).

``FileInfo.etag`` is the hex SHA-256 of the content on every driver. S3's own ETag is an MD5
at best (and not even that for multipart uploads or SSE-KMS objects), so the SHA-256 computed
while the bytes pass is stored in the object metadata entry ``x-amz-meta-lexigram-sha256``
(hidden from the user metadata). A single PutObject also sends it as ``x-amz-checksum-sha256``,
so the server verifies the body against it. For a multipart upload of a stream the digest is
only known after the last part, so the finished object is copied onto itself server-side
(guarded by ``CopySourceIfMatch``) to record it. In-memory payloads (bytes, str) and seekable
files have their digest upfront (files are hashed in a worker thread first, without moving
their position) and need no copy; if a file changes while it is uploaded, the copy records the
digest of what was actually sent.

A create-only upload (``If-None-Match: *``) also stores a random token of its own in the hidden
entry ``x-amz-meta-lexigram-upload``: a 412 may answer a retry of an attempt that stored the
object but whose answer was lost, so every 412 is checked with a HeadObject, and the object
holding this upload's token is this upload's success (``S3Driver._refused_create``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import secrets
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Self
from urllib.parse import quote, urlsplit

from lexigram.contracts.infra.storage import StorageError
from pydantic import SecretStr

from lexigram_storage.config import (
    EncryptionConfig,
    NamedStorageConfig,
    StorageR2Config,
    StorageS3Config,
    secret_value,
    settings_from,
)
from lexigram_storage.drivers._parts import PartRules, abort_upload, start_upload, upload
from lexigram_storage.drivers.base import (
    BaseDriver,
    DriverContext,
    await_to_end,
    create_only_conflict,
)
from lexigram_storage.errors import (
    PreconditionFailedError,
    StorageBucketNotFoundError,
    StorageFileNotFoundError,
    StoragePermissionError,
    StorageRequestRejectedError,
    StorageUnavailableError,
    unsupported,
)
from lexigram_storage.events import StorageEvents
from lexigram_storage.models import DirListing, ObjectInfo
from lexigram_storage.payload import Payload, UploadPolicy

try:
    import aioboto3
    import aiohttp
    import botocore.exceptions as boto_exc
    from aiobotocore.config import AioConfig
    from botocore.handlers import add_expect_header

    from lexigram_storage.drivers._http import aiobotocore_session_class
    from lexigram_storage.drivers._s3_direct import DirectS3
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'The s3/r2 drivers need aioboto3: pip install "lexigram_storage[s3]"', name=exc.name,
    ) from exc

__all__ = ["DIGEST_METADATA_KEY", "R2Driver", "S3Driver"]

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
#: S3's object size limit (5 TiB): ranges are clamped to it
MAX_OBJECT_SIZE = 5 * 1024 * GiB
#: the user-metadata entry holding the hex SHA-256 of the content (x-amz-meta-lexigram-sha256)
DIGEST_METADATA_KEY = "lexigram-sha256"
#: the entry written by earlier versions (hex MD5): hidden from the user metadata too
_LEGACY_DIGEST_KEY = "lexigram-md5"
#: the entry holding a create-only upload's own random token, hidden from the user metadata
#: too: when a create-only write is refused (412), the object's token tells whether it is this
#: upload's own (an earlier attempt stored it but its answer was lost)
_UPLOAD_TOKEN_KEY = "lexigram-upload"
_RESERVED_METADATA = (DIGEST_METADATA_KEY, _LEGACY_DIGEST_KEY, _UPLOAD_TOKEN_KEY)
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET = frozenset({"NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem",
                     "InvalidToken", "ExpiredToken"})
# transient answers (some S3-compatible stores send them with a 400 or without a status)
_UNAVAILABLE = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                          "Throttling", "ThrottlingException", "TooManyRequests",
                          "500", "502", "503", "504"})
_PRESIGN_GET_OPTIONS = {
    "response_content_disposition": "ResponseContentDisposition",
    "response_content_type": "ResponseContentType",
    "response_cache_control": "ResponseCacheControl",
}
_PRESIGN_PUT_OPTIONS = {"content_type": "ContentType"}
_SSE_HEADERS = {"ServerSideEncryption": "x-amz-server-side-encryption",
                "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}
#: the key of the URL presigned once to learn the bucket's URL, signing region and service
_PROBE_KEY = "lexigram-probe"


def map_s3_error(exc: BaseException, backend: str, bucket: str, key: str | None, *,
                 bucket_request: bool = False) -> StorageError | None:
    """The one translation of S3 and HTTP-client errors (``None``: not an S3 error).

    ============================================  =====================================
    server answer / client failure                error
    ============================================  =====================================
    ``NoSuchBucket``; 404 to a bucket request     ``StorageBucketNotFoundError``
    404, ``NoSuchKey``                            ``StorageFileNotFoundError``
    403, ``AccessDenied``, bad or expired keys    ``StoragePermissionError``
    412, ``PreconditionFailed``                   ``PreconditionFailedError``
    5xx, 429, ``SlowDown``, ``RequestTimeout``,   ``StorageUnavailableError``
    throttling; connection refused/reset/closed,
    connect and read timeouts
    any other 4xx (``InvalidArgument``,           ``StorageRequestRejectedError``
    ``MetadataTooLarge``, ``InvalidRequest``...);
    a request the SDK or HTTP client refuses to
    send (parameter validation, header injection)
    ============================================  =====================================
    """
    if isinstance(exc, boto_exc.ClientError):
        code = _code(exc)
        status = _status(exc)
        message = str(exc.response.get("Error", {}).get("Message") or code or status)
        text = f"{code or status}: {message}"
        details = {"status": status, "error_code": code}
        if code in _NO_BUCKET or (bucket_request and (code in _NOT_FOUND or status == 404)):
            return StorageBucketNotFoundError(f"bucket {bucket!r} does not exist",
                                              backend=backend, key=key, details=details, cause=exc)
        if code in _NOT_FOUND or status == 404:
            return StorageFileNotFoundError(backend=backend, key=key, details=details, cause=exc)
        if code in _DENIED or status == 403:
            return StoragePermissionError(text, backend=backend, key=key, details=details,
                                          cause=exc)
        if code == "PreconditionFailed" or status == 412:
            return PreconditionFailedError(text, backend=backend, key=key, details=details,
                                           cause=exc)
        if code in _UNAVAILABLE or status >= 500 or status == 429:
            return StorageUnavailableError(text, backend=backend, key=key, details=details,
                                           cause=exc)
        return StorageRequestRejectedError(text, backend=backend, key=key, details=details,
                                           cause=exc)
    if isinstance(exc, boto_exc.NoCredentialsError | boto_exc.PartialCredentialsError):
        return StoragePermissionError(
            f"no usable AWS credentials: {exc}", backend=backend, key=key, cause=exc,
            hint="Set access_key/secret_key or configure the AWS credential chain.")
    if isinstance(exc, boto_exc.ParamValidationError):
        return StorageRequestRejectedError(f"the S3 client refused the request: {exc}",
                                           backend=backend, key=key, cause=exc)
    if type(exc) is boto_exc.HTTPClientError:  # its subclasses are timeouts and closed connections
        # botocore wraps whatever the HTTP client raised: an outage only when that was one
        inner = getattr(exc, "kwargs", {}).get("error")
        if isinstance(inner, ValueError):  # e.g. aiohttp refusing a header with CR/LF
            return StorageRequestRejectedError(f"the HTTP client refused the request: {inner}",
                                               backend=backend, key=key, cause=exc)
        if not isinstance(inner, OSError | TimeoutError | aiohttp.ClientConnectionError
                          | aiohttp.ClientPayloadError):
            return None  # a generic StorageError: something failed, but not the connection
    if isinstance(exc, boto_exc.ConnectionError | boto_exc.HTTPClientError
                  | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
                  | TimeoutError | ConnectionError):
        return StorageUnavailableError(f"{type(exc).__name__}: {exc}", backend=backend,
                                       key=key, cause=exc)
    return None


def _code(exc: BaseException) -> str:
    if isinstance(exc, boto_exc.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: BaseException) -> int:
    if isinstance(exc, boto_exc.ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        return int(meta.get("HTTPStatusCode") or 0)
    return 0


_SESSION: Any = None


def _shared_session() -> Any:
    """One aioboto3 session per process: clients share its loaded service models (a new
    session costs ~0.3 s per client) and its credential chain. Static keys are passed per
    client, so drivers with different credentials never mix them."""
    global _SESSION
    if _SESSION is None:
        _SESSION = aioboto3.Session()
    return _SESSION


class S3Driver(BaseDriver):
    """Objects in an Amazon S3 (or S3-compatible) bucket.

    Args:
        bucket: the bucket name.
        region: AWS region; ``None`` lets the SDK resolve it.
        access_key / secret_key / session_token: static credentials; omit them to use the
            standard AWS credential chain (env, profile, IMDS, ...).
        endpoint_url: a custom endpoint (MinIO, moto, R2 ...).
        multipart_threshold: uploads of at least this many bytes use multipart.
        multipart_chunk_size: the part size (at least 5 MiB; grows to stay under 10,000 parts).
        encryption: server-side encryption for every PutObject/CreateMultipartUpload/CopyObject.
        public_url: custom domain / CDN used by ``get_url``.
        addressing_style: ``auto``, ``path`` or ``virtual``.
        connect_timeout / read_timeout: seconds per attempt.
        max_attempts: attempts per request including the first; retry_mode: botocore mode.
        max_concurrency: parts (and listing HEADs) in flight at once.
        enable_encryption: encrypt even when ``encryption`` is unset or disabled (AES256 unless
            ``encryption`` names KMS).
        checksum_mode: botocore's request/response checksum setting (``when_supported`` or
            ``when_required``; S3-compatible stores often need the latter).
        direct_requests: send single PutObject, GetObject, HeadObject and DeleteObject
            requests over the driver's own aiohttp session (``drivers/_s3_direct.py``) when
            ``retry_mode`` is ``standard``, the region or endpoint is known and the bucket is a
            plain name; ``False``: every request through aioboto3.
    """

    driver: ClassVar[str] = "s3"
    config_model: ClassVar[type[StorageS3Config]] = StorageS3Config
    default_checksum_mode: ClassVar[str] = "when_supported"
    #: CopyObject handles sources up to this size; bigger ones use a multipart copy
    max_single_copy: ClassVar[int] = MAX_PART_SIZE
    #: part size of a multipart copy
    copy_part_size: ClassVar[int] = 512 * MiB

    def __init__(
        self,
        bucket: str,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | SecretStr | None = None,
        endpoint_url: str | None = None,
        multipart_threshold: int = 8 * MiB,
        multipart_chunk_size: int = 8 * MiB,
        encryption: EncryptionConfig | None = None,
        public_url: str | None = None,
        addressing_style: str = "auto",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        retry_mode: str = "standard",
        max_concurrency: int = 4,
        *,
        session_token: str | SecretStr | None = None,
        enable_encryption: bool = False,
        checksum_mode: str | None = None,
        direct_requests: bool = True,
        name: str | None = None,
        policy: UploadPolicy | None = None,
        events: StorageEvents | None = None,
        **more: Any,
    ) -> None:
        super().__init__(name=name, policy=policy, events=events)
        # the arguments pass the configuration model's checks: the same rules as a config file
        settings = settings_from(self.config_model, locals(), more=more, backend=self.name)
        self.settings = settings
        self._bucket = settings.bucket
        self.region = settings.region
        self.endpoint_url = settings.endpoint_url.rstrip("/") if settings.endpoint_url else None
        self.multipart_threshold = settings.multipart_threshold
        self.multipart_chunk_size = settings.multipart_chunk_size
        self.public_url = settings.public_url.rstrip("/") if settings.public_url else None
        self.addressing_style = settings.addressing_style
        self.connect_timeout = settings.connect_timeout
        self.read_timeout = settings.read_timeout
        self.max_attempts = settings.max_attempts
        self.retry_mode = settings.retry_mode
        self.max_concurrency = settings.max_concurrency
        self.checksum_mode = settings.checksum_mode or self.default_checksum_mode
        self._access_key = settings.access_key
        self._secret_key = settings.secret_key
        self._session_token = settings.session_token
        self._sse = self._encryption_params(settings.encryption, enable_encryption)
        self._client: Any = None
        self._client_cm: Any = None
        self._client_lock: asyncio.Lock | None = None
        # the direct path reproduces botocore's standard retry mode only, and resolves the
        # bucket's URL once: not for a region left to the SDK (botocore follows a bucket's
        # region redirects), access-point ARNs or S3 Express directory buckets (session auth)
        self.direct_requests = (
            settings.direct_requests and settings.retry_mode == "standard"
            and (self.region is not None or self.endpoint_url is not None)
            and not self._bucket.startswith("arn:") and not self._bucket.endswith("--x-s3"))
        self._direct: DirectS3 | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_named(cls, entry: NamedStorageConfig, context: DriverContext) -> Self:
        return cls.from_config(entry.driver_config(), name=entry.name, policy=context.policy,
                               enable_encryption=context.enable_encryption)

    @staticmethod
    def _encryption_params(encryption: EncryptionConfig | None, force: bool) -> dict[str, str]:
        if encryption is None or not (encryption.enabled or force):
            return {"ServerSideEncryption": "AES256"} if force else {}
        params: dict[str, str] = {"ServerSideEncryption": encryption.type}
        if encryption.type == "aws:kms" and encryption.kms_key_id:
            params["SSEKMSKeyId"] = encryption.kms_key_id
        return params

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def encryption_params(self) -> dict[str, str]:
        """The server-side encryption parameters sent with every write (a copy)."""
        return dict(self._sse)

    @property
    def presigned_put_headers(self) -> dict[str, str]:
        """The headers a client must send with a presigned PUT URL of this driver besides
        ``Content-Type`` (when one was signed): the server-side encryption settings are signed
        into the URL, so S3 rejects a PUT without them (a copy; empty without encryption)."""
        return {_SSE_HEADERS[name]: value for name, value in self._sse.items()}

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} name={self.name!r} bucket={self._bucket!r} "
                f"endpoint={self.endpoint_url!r}>")

    # ------------------------------------------------------------------ client lifecycle

    def _boto_config(self) -> Any:
        return AioConfig(
            # request bodies are sent under an idle deadline of read_timeout (drivers/_http.py)
            http_session_cls=aiobotocore_session_class(),
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"total_max_attempts": self.max_attempts, "mode": self.retry_mode},
            max_pool_connections=max(16, self.max_concurrency * 4),
            request_checksum_calculation=self.checksum_mode,
            response_checksum_validation=self.checksum_mode,
        )

    async def _get_client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        if self._closed:
            raise StorageUnavailableError("the driver is closed", backend=self.name)
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                credentials: dict[str, Any] = {}
                if self._access_key is not None:
                    credentials = {
                        "aws_access_key_id": self._access_key,
                        "aws_secret_access_key": secret_value(self._secret_key),
                        "aws_session_token": secret_value(self._session_token),
                    }
                cm = _shared_session().client("s3", endpoint_url=self.endpoint_url,
                                              region_name=self.region,
                                              config=self._boto_config(), **credentials)
                client = await cm.__aenter__()
                # botocore sends "Expect: 100-continue" on PutObject/UploadPart and aiohttp then
                # waits for the 100 without any timeout: a hung server would hang uploads forever.
                client.meta.events.unregister("before-call.s3", add_expect_header)
                if self.direct_requests:
                    try:
                        self._direct = await self._direct_client(client)
                    except BaseException:
                        await cm.__aexit__(None, None, None)
                        raise
                self._client_cm = cm
                self._client = client
            return self._client

    async def _direct_client(self, client: Any) -> DirectS3:
        """The direct path, with what botocore resolved for this bucket: its URL, signing
        region and service (from a presigned URL: no request is sent) and its credentials
        (the client's signer holds them; botocore has no public accessor)."""
        probe = await client.generate_presigned_url(
            "head_object", Params={"Bucket": self._bucket, "Key": _PROBE_KEY})
        return DirectS3(
            probe, _PROBE_KEY, client._request_signer._credentials,
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            max_attempts=self.max_attempts, pool_size=max(16, self.max_concurrency * 4),
            validate_checksums=self.checksum_mode == "when_supported")

    async def _get_direct(self) -> DirectS3 | None:
        """The direct path (``None`` when every request goes through aioboto3)."""
        if self._client is None:
            await self._get_client()
        return self._direct

    async def prepare(self) -> None:
        await self._get_client()

    async def _close(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        direct, self._direct = self._direct, None
        if direct is not None:
            await direct.close()
        if cm is not None:
            await cm.__aexit__(None, None, None)

    # ------------------------------------------------------------------ errors

    def _map_error(self, exc: BaseException, key: str | None) -> StorageError | None:
        return map_s3_error(exc, self.name, self._bucket, key)

    # ------------------------------------------------------------------ object info

    def _info_from_head(self, key: str, head: dict[str, Any]) -> ObjectInfo:
        raw_meta = dict(head.get("Metadata") or {})
        digest = raw_meta.get(DIGEST_METADATA_KEY)
        raw_meta = _user_metadata(raw_meta)
        etag = digest or str(head.get("ETag") or "").strip('"') or None
        modified = head.get("LastModified")
        modified = modified.astimezone(UTC) if isinstance(modified, datetime) else datetime.now(UTC)
        return ObjectInfo(
            path=key,
            size=int(head.get("ContentLength") or 0),
            content_type=str(head.get("ContentType") or "application/octet-stream"),
            last_modified=modified,
            etag=etag,
            # names never hold "-" (the metadata rule); Ceph RGW turns "_" into "-" in them
            metadata={k.lower().replace("-", "_"): str(v) for k, v in raw_meta.items()},
            cache_control=head.get("CacheControl"),
        )

    def _write_params(self, payload: Payload, digest: str | None, token: str | None
                      ) -> dict[str, Any]:
        """PutObject/CreateMultipartUpload/CopyObject parameters: content type, metadata with
        the digest and the create-only upload's token (when known), cache control, SSE."""
        request = payload.request
        metadata = _user_metadata(request.metadata)
        if digest is not None:
            metadata[DIGEST_METADATA_KEY] = digest
        if token is not None:
            metadata[_UPLOAD_TOKEN_KEY] = token
        params: dict[str, Any] = {"ContentType": request.content_type, "Metadata": metadata}
        if request.cache_control:
            params["CacheControl"] = request.cache_control
        params.update(self._sse)
        return params

    # ------------------------------------------------------------------ writing

    @property
    def part_rules(self) -> PartRules:
        """How uploads are cut into parts (the shared upload engine's settings)."""
        return PartRules(threshold=self.multipart_threshold, part_size=self.multipart_chunk_size,
                         max_concurrency=self.max_concurrency, max_part_size=MAX_PART_SIZE,
                         max_parts=MAX_PARTS,
                         abort_timeout=self.connect_timeout + self.read_timeout)

    async def _write(self, key: str, payload: Payload) -> ObjectInfo:
        client = await self._get_client()
        token = secrets.token_urlsafe(16) if payload.request.create_only else None

        async def put_whole(body: bytes) -> dict[str, Any]:
            # the commit: once the request is sent the server may store the object, so the
            # call waits for the answer even if cancelled (the cancellation guarantee)
            return await await_to_end(self._put_single(client, key, payload, body, token))

        response = await upload(payload, self.part_rules, put_whole,
                                _Multipart(self, client, key, payload, token=token))
        return self._written_info(key, payload, response)

    async def _put_single(self, client: Any, key: str, payload: Payload, body: bytes,
                          token: str | None) -> dict[str, Any]:
        digest = payload.etag
        params = self._write_params(payload, digest, token)
        # the server checks the body against it (and skips botocore's default CRC32)
        params["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(digest)).decode()
        if token is not None:
            params["IfNoneMatch"] = "*"
        try:
            if self._direct is not None:
                answer = await self._direct.put_object(key, body, _put_headers(params), digest)
                return {"ETag": answer.headers.get("ETag")}
            response: dict[str, Any] = await client.put_object(Bucket=self._bucket, Key=key,
                                                               Body=body, **params)
        except boto_exc.ClientError as exc:
            if token is not None and _is_precondition_failure(exc):
                return await self._refused_create(exc, key, token)
            raise
        return response

    async def _refused_create(self, exc: boto_exc.ClientError, key: str, token: str
                              ) -> dict[str, Any]:
        """A create-only write (PutObject, CompleteMultipartUpload) answered 412: an object
        exists, but it may be this upload's own, stored by an earlier attempt whose answer was
        lost. Retries happen where the driver cannot count them (botocore's, and aiohttp's
        silent resend of a PUT on a reused connection the server closed), so a HEAD decides
        after every 412: this upload's token, the upload succeeded (the HeadObject fields are
        the write's answer); anything else (another object, or none any more), the conflict."""
        head = await self._head_answer(key)
        if head is None or (head.get("Metadata") or {}).get(_UPLOAD_TOKEN_KEY) != token:
            raise create_only_conflict(self.name, key) from exc
        return head

    def _written_info(self, key: str, payload: Payload, response: dict[str, Any]) -> ObjectInfo:
        request = payload.request
        modified = response.get("LastModified")
        return ObjectInfo(
            path=key,
            size=payload.size,
            content_type=request.content_type,
            last_modified=modified.astimezone(UTC) if isinstance(modified, datetime)
            else datetime.now(UTC),
            etag=payload.etag,
            metadata=_user_metadata(request.metadata),
            cache_control=request.cache_control,
        )

    async def _server_copy(self, client: Any, src: str, dst: str, size: int,
                           replace: dict[str, Any] | None, if_match: str | None = None
                           ) -> dict[str, Any]:
        """CopyObject (``replace`` = new ContentType/Metadata/CacheControl, else COPY), or a
        multipart copy above ``max_single_copy``."""
        source = {"Bucket": self._bucket, "Key": src}
        guard = {"CopySourceIfMatch": if_match} if if_match else {}
        if size <= self.max_single_copy:
            if replace is not None:
                params: dict[str, Any] = {"MetadataDirective": "REPLACE", **replace}
            else:
                params = {"MetadataDirective": "COPY", **self._sse}
            # the commit of a copy: runs to its end even if the call is cancelled meanwhile
            response: dict[str, Any] = await await_to_end(client.copy_object(
                Bucket=self._bucket, Key=dst, CopySource=source, **params, **guard))
            return response
        if replace is None:
            head = await client.head_object(Bucket=self._bucket, Key=src)
            replace = {"ContentType": head.get("ContentType") or "application/octet-stream",
                       "Metadata": dict(head.get("Metadata") or {}), **self._sse}
            if head.get("CacheControl"):
                replace["CacheControl"] = head["CacheControl"]
        sink = _Multipart(self, client, dst, params=replace)
        rules = self.part_rules
        await start_upload(sink, None, rules)
        part = max(self.copy_part_size, math.ceil(size / (MAX_PARTS - 1)), MIN_PART_SIZE)
        ranges = [(i // part + 1, i, min(i + part, size) - 1) for i in range(0, size, part)]
        limit = asyncio.Semaphore(self.max_concurrency)
        etags: dict[int, str] = {}

        async def copy_part(number: int, first: int, last: int) -> None:
            async with limit:
                etags[number] = await sink.copy_part(number, source, first, last, guard)

        tasks = [asyncio.ensure_future(copy_part(*r)) for r in ranges]
        try:
            await asyncio.gather(*tasks)
            return await await_to_end(sink.complete(sorted(etags.items()), False))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await abort_upload(sink, rules)
            raise

    # ------------------------------------------------------------------ reading

    async def _read(self, key: str, offset: int, length: int | None, chunk_size: int
                    ) -> AsyncIterator[bytes]:
        client = await self._get_client()
        if length is not None and offset + length > MAX_OBJECT_SIZE:
            length = None  # to the end: no object is bigger (and servers reject huge ranges)
        if length == 0 or offset >= MAX_OBJECT_SIZE:
            if await self._head(key) is None:
                raise StorageFileNotFoundError(backend=self.name, key=key)
            return
        params: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            params["Range"] = f"bytes={offset}-{end}"
        try:
            response = await client.get_object(Bucket=self._bucket, Key=key, **params)
        except boto_exc.ClientError as exc:
            if _code(exc) == "InvalidRange" or _status(exc) == 416:
                return  # the object exists; the range starts at or past its end
            raise
        body = response["Body"]
        async with body:
            async for chunk in body.iter_chunks(chunk_size):
                if chunk:
                    yield chunk

    async def _read_all(self, key: str) -> bytes:
        direct = await self._get_direct()
        if direct is not None:
            return (await direct.get_object(key)).body
        client = await self._get_client()
        response = await client.get_object(Bucket=self._bucket, Key=key)
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def _head(self, key: str) -> ObjectInfo | None:
        head = await self._head_answer(key)
        return None if head is None else self._info_from_head(key, head)

    async def _head_answer(self, key: str) -> dict[str, Any] | None:
        """The HeadObject answer's fields (``None``: no such object)."""
        direct = await self._get_direct()
        try:
            if direct is not None:
                return _head_fields((await direct.head_object(key)).headers)
            client = await self._get_client()
            head: dict[str, Any] = await client.head_object(Bucket=self._bucket, Key=key)
        except boto_exc.ClientError as exc:
            if _code(exc) in _NOT_FOUND or _status(exc) == 404:
                return None
            raise
        return head

    # ------------------------------------------------------------------ deleting

    async def _delete(self, key: str) -> bool:
        if await self._head(key) is None:
            return False
        if self._direct is not None:
            await self._direct.delete_object(key)
        else:
            client = await self._get_client()
            await client.delete_object(Bucket=self._bucket, Key=key)
        return True

    async def _delete_many(self, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        client = await self._get_client()
        failed: dict[str, str] = {}
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            response = await client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            for error in response.get("Errors") or []:
                failed[str(error.get("Key"))] = (f"{error.get('Code', 'Error')}: "
                                                 f"{error.get('Message', '')}").strip()
        return [k for k in keys if k not in failed], failed

    # ------------------------------------------------------------------ listing

    async def _full_infos(self, client: Any, summaries: AsyncIterator[dict[str, Any]]
                          ) -> AsyncIterator[ObjectInfo]:
        """HEAD each listed object (S3 listings carry no content type or metadata), up to
        ``max(8, 2 * max_concurrency)`` at once, yielding in listing order."""
        window = max(8, 2 * self.max_concurrency)
        queue: deque[asyncio.Task[ObjectInfo | None]] = deque()
        try:
            async for summary in summaries:
                queue.append(asyncio.ensure_future(self._head(str(summary["Key"]))))
                if len(queue) >= window:
                    info = await queue.popleft()
                    if info is not None:  # deleted since it was listed
                        yield info
            while queue:
                info = await queue.popleft()
                if info is not None:
                    yield info
        finally:
            for task in queue:
                task.cancel()
            if queue:
                await asyncio.gather(*queue, return_exceptions=True)

    async def _pages(self, client: Any, **params: Any) -> AsyncIterator[dict[str, Any]]:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self._bucket, **params):
            yield page

    async def _summaries(self, client: Any, prefix: str, start_after: str | None
                         ) -> AsyncIterator[dict[str, Any]]:
        """The listed objects (key, size, ETag: no content type or metadata), page by page."""
        params: dict[str, Any] = {"Prefix": prefix}
        if start_after is not None and start_after >= prefix:
            params["StartAfter"] = start_after
        async for page in self._pages(client, **params):
            for item in page.get("Contents") or []:
                yield item

    async def _list(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        client = await self._get_client()
        async for info in self._full_infos(client, self._summaries(client, prefix, start_after)):
            yield info

    async def _list_keys(self, prefix: str, start_after: str | None) -> AsyncIterator[str]:
        """Keys from the listing alone (``_list`` HEADs every object for its details)."""
        client = await self._get_client()
        async for item in self._summaries(client, prefix, start_after):
            yield str(item["Key"])

    async def _list_dir(self, prefix: str, delimiter: str) -> DirListing:
        client = await self._get_client()
        prefixes: list[str] = []
        contents: list[dict[str, Any]] = []
        async for page in self._pages(client, Prefix=prefix, Delimiter=delimiter):
            contents.extend(page.get("Contents") or [])
            prefixes.extend(str(p["Prefix"]) for p in page.get("CommonPrefixes") or [])

        async def summaries() -> AsyncIterator[dict[str, Any]]:
            for item in contents:
                yield item

        files = [info async for info in self._full_infos(client, summaries())]
        return DirListing(files=files, prefixes=sorted(set(prefixes)))

    # ------------------------------------------------------------------ copy and move

    async def _copy(self, src: str, dst: str) -> ObjectInfo:
        head = await self._head(src)
        if head is None:
            raise StorageFileNotFoundError(backend=self.name, key=src)
        client = await self._get_client()
        response = await self._server_copy(client, src, dst, head.size, None)
        result = response.get("CopyObjectResult") or {}
        modified = result.get("LastModified")
        return ObjectInfo(
            path=dst, size=head.size, content_type=head.content_type,
            last_modified=modified.astimezone(UTC) if isinstance(modified, datetime)
            else datetime.now(UTC),
            etag=head.etag, metadata=dict(head.metadata or {}), cache_control=head.cache_control,
        )

    # ------------------------------------------------------------------ URLs and health

    def _url(self, key: str) -> str:
        path = quote(key, safe="/~")
        if self.public_url:
            return f"{self.public_url}/{path}"
        bucket = quote(self._bucket, safe="")
        if self.endpoint_url:
            if self.addressing_style == "virtual":
                parts = urlsplit(self.endpoint_url)
                return f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}/{path}"
            return f"{self.endpoint_url}/{bucket}/{path}"
        region = self.region or "us-east-1"
        if self.addressing_style == "path":
            return f"https://s3.{region}.amazonaws.com/{bucket}/{path}"
        return f"https://{bucket}.s3.{region}.amazonaws.com/{path}"

    async def _presign(self, key: str, expires_in: timedelta, method: str,
                       options: dict[str, Any]) -> str:
        allowed = _PRESIGN_GET_OPTIONS if method == "GET" else _PRESIGN_PUT_OPTIONS
        unknown = set(options) - set(allowed)
        if unknown:
            raise unsupported(self.name, f"get_presigned_url option(s) {sorted(unknown)}",
                              hint=f"{method} URLs accept: {sorted(allowed)}")
        params: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        for option, value in options.items():
            if value is not None:
                params[allowed[option]] = value
        if method == "PUT":
            # signed as headers: the client must send them (``presigned_put_headers``)
            params.update(self._sse)
        client = await self._get_client()
        operation = "get_object" if method == "GET" else "put_object"
        url: str = await client.generate_presigned_url(
            operation, Params=params, ExpiresIn=max(1, int(expires_in.total_seconds())),
            HttpMethod=method)
        return url

    async def _ping(self) -> dict[str, Any]:
        client = await self._get_client()
        try:
            await client.head_bucket(Bucket=self._bucket)
        except Exception as exc:
            mapped = map_s3_error(exc, self.name, self._bucket, None, bucket_request=True)
            if mapped is None:
                raise
            raise mapped from exc
        return {"endpoint": self.endpoint_url or "aws", "region": self.region}


class _Multipart:
    """One S3 multipart upload: the upload engine's part sink, four SDK calls (plus the part
    copies of a multipart copy and the self-copy recording a digest known only at the end)."""

    def __init__(self, driver: S3Driver, client: Any, key: str, payload: Payload | None = None,
                 params: dict[str, Any] | None = None, token: str | None = None) -> None:
        self.driver = driver
        self.client = client
        self.bucket = driver.bucket
        self.key = key
        self.payload = payload
        self.params = params
        #: a create-only upload's token (``S3Driver._refused_create``)
        self.token = token
        self.upload_id: str | None = None

    async def start(self, digest: str | None) -> None:
        params = self.params
        if params is None:
            assert self.payload is not None
            params = self.driver._write_params(self.payload, digest, self.token)
        created = await self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key,
                                                            **params)
        self.upload_id = str(created["UploadId"])

    async def put_part(self, number: int, pieces: list[bytes | memoryview]) -> str:
        crc32 = self.driver.checksum_mode == "when_supported"
        body, checksum = await asyncio.to_thread(_part_body, pieces, crc32)
        pieces.clear()  # the body owns the only copy now
        response = await self.client.upload_part(Bucket=self.bucket, Key=self.key,
                                                 UploadId=self.upload_id, PartNumber=number,
                                                 Body=body, **checksum)
        return str(response["ETag"])

    async def copy_part(self, number: int, source: dict[str, str], first: int, last: int,
                        guard: dict[str, str]) -> str:
        response = await self.client.upload_part_copy(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
            CopySource=source, CopySourceRange=f"bytes={first}-{last}", **guard)
        return str(response["CopyPartResult"]["ETag"])

    async def complete(self, parts: list[tuple[int, str]], create_only: bool
                       ) -> dict[str, Any]:
        try:
            response = await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
                **({"IfNoneMatch": "*"} if create_only else {}))
        except boto_exc.ClientError as exc:
            if create_only and _is_precondition_failure(exc):
                assert self.token is not None  # every create-only upload has one
                return await self.driver._refused_create(exc, self.key, self.token)
            raise
        return dict(response)

    async def abort(self) -> None:
        """Abort the upload. As AWS advises, the abort is repeated until ``ListParts`` says
        the upload is gone (``NoSuchUpload``): a part request still in flight can land after an
        abort, and any other answer proves nothing."""
        if self.upload_id is None:
            return
        for attempt in range(4):
            with contextlib.suppress(boto_exc.ClientError):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key,
                                                         UploadId=self.upload_id)
            try:
                await self.client.list_parts(Bucket=self.bucket, Key=self.key,
                                             UploadId=self.upload_id)
            except boto_exc.ClientError as exc:
                if _code(exc) == "NoSuchUpload" or _status(exc) == 404:
                    return  # nothing left behind
                # another answer (a 500...) proves nothing: abort again
            await asyncio.sleep(0.05 * (attempt + 1))

    async def record_digest(self, result: dict[str, Any], digest: str) -> None:
        """A server-side copy of the object onto itself with the digest in its metadata,
        guarded by its ETag so a concurrent writer's object is never touched."""
        assert self.payload is not None
        params = self.driver._write_params(self.payload, digest, self.token)
        try:
            await self.driver._server_copy(self.client, self.key, self.key, self.payload.size,
                                           params, if_match=str(result.get("ETag", "")))
        except boto_exc.ClientError as exc:
            if _status(exc) == 412:  # someone overwrote it meanwhile: theirs now
                return
            raise


def _is_precondition_failure(exc: boto_exc.ClientError) -> bool:
    return _code(exc) in ("PreconditionFailed", "412") or _status(exc) == 412


def _put_headers(params: dict[str, Any]) -> dict[str, str]:
    """The headers botocore sends for these PutObject parameters (``_put_single``'s)."""
    headers = {"content-type": params["ContentType"],
               "x-amz-checksum-sha256": params["ChecksumSHA256"]}
    headers.update({f"x-amz-meta-{name.lower()}": value
                    for name, value in params["Metadata"].items()})
    if "CacheControl" in params:
        headers["cache-control"] = params["CacheControl"]
    if "IfNoneMatch" in params:
        headers["if-none-match"] = params["IfNoneMatch"]
    for name, header in _SSE_HEADERS.items():
        if name in params:
            headers[header] = params[name]
    return headers


def _head_fields(headers: Mapping[str, str]) -> dict[str, Any]:
    """The HeadObject fields ``_info_from_head`` reads, from the answer's headers (as botocore
    parses them: metadata names lower-case, whatever case the server or a proxy sent them in,
    e.g. Go's canonical ``X-Amz-Meta-Lexigram-Sha256``)."""
    modified = headers.get("Last-Modified")
    prefix = "x-amz-meta-"
    return {
        "Metadata": {name.lower()[len(prefix):]: value for name, value in headers.items()
                     if name.lower().startswith(prefix)},
        "ContentLength": int(headers.get("Content-Length") or 0),
        "ContentType": headers.get("Content-Type"),
        "LastModified": parsedate_to_datetime(modified) if modified else None,
        "ETag": headers.get("ETag"),
        "CacheControl": headers.get("Cache-Control"),
    }


def _user_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """A copy of *metadata* without the entries reserved for the driver."""
    if not metadata:
        return {}
    return {k: v for k, v in metadata.items() if k not in _RESERVED_METADATA}


def _part_body(pieces: list[bytes | memoryview], crc32: bool
               ) -> tuple[io.BytesIO, dict[str, str]]:
    """One part's body as a BytesIO, and the CRC32 checksum botocore would otherwise compute
    on the event loop (``when_supported``). Runs in a worker thread. A part that arrived as one
    chunk is wrapped as it is (aiohttp copies it once, when it sends it, and the chunk is freed
    then); pieces are copied once into a BytesIO that owns its buffer (aiohttp copies that one
    no more). Either way each byte is copied once and a part in flight is held once."""
    if len(pieces) == 1 and type(pieces[0]) is bytes:
        body = io.BytesIO(pieces[0])  # shares the bytes until aiohttp copies them
    else:
        body = io.BytesIO()
        for piece in pieces:
            body.write(piece)
        body.seek(0)
    if not crc32:
        return body, {}
    value = 0
    for piece in pieces:
        value = zlib.crc32(piece, value)
    return body, {"ChecksumAlgorithm": "CRC32",
                  "ChecksumCRC32": base64.b64encode(value.to_bytes(4, "big")).decode()}


class R2Driver(S3Driver):
    """Cloudflare R2: the S3 driver with R2's rules (endpoint required, region ``auto``,
    SigV4, request/response checksums only when required)."""

    driver: ClassVar[str] = "r2"
    config_model: ClassVar[type[StorageS3Config]] = StorageR2Config
    default_checksum_mode: ClassVar[str] = "when_required"
