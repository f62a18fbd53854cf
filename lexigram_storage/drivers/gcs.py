"""Google Cloud Storage driver: the JSON API over the driver's own aiohttp session.

One aiohttp session per driver, opened at ``prepare()`` or on first use and closed by
``close()``; every request goes through ``_call`` (answer read whole) or ``_open`` (a streamed
download), which add the access token, apply the shared timeouts and retry. Credentials come from
gcloud-aio-auth: a service-account JSON file (``credentials_path``), else Application Default
Credentials; an ``endpoint_url`` without ``credentials_path`` is an emulator and gets none.

Uploads go through the shared upload engine (``drivers/_parts.py``): below
``resumable_threshold`` one multipart request (metadata and bytes together); above it a
resumable upload session (``_Resumable``): a seekable file as one streamed PUT, bytes in memory
as one streamed PUT and a small finalize, a stream of unknown size in chunks of ``chunk_size``
sent one at a time. The request that finalizes the upload (with the object's size) is the
commit: nothing is stored before it, and a failure or cancellation before it deletes the
session. ``if_none_match="*"`` is ``ifGenerationMatch=0`` on the request that creates the
object.

``FileInfo.etag`` is the hex SHA-256 of the content on every driver: it is stored in the object
metadata entry ``lexigram-sha256`` (hidden from the user metadata), sent with the object when
known upfront (bytes, seekable files) and otherwise added by a metadata patch guarded by the
object's generation. The MD5 of the bytes sent is given to the server, which verifies it before
it stores anything: ``md5Hash`` in the resource of a single request, ``X-Goog-Hash: md5=...`` on
the request that finalizes a resumable upload. GCS answers a mismatch with 400 (``invalid``,
"Provided MD5 hash ... doesn't match calculated MD5 hash ..."), the object is not replaced, and
the upload raises ``ChecksumMismatchError``. For servers that ignore the hash (fake-gcs-server
1.54), the ``md5Hash`` the server reports for what it stored is compared too: a mismatch there
raises ``ChecksumMismatchError`` and removes that object.

Requests that may be repeated (reads, listings, deletes, metadata patches, copies, the start of
an upload session, single uploads without ``if_none_match``) are retried on connection failures,
timeouts and 408/429/5xx answers, ``max_attempts`` attempts in all, waiting
:func:`~lexigram_storage.drivers._http.retry_delay` between them (as every driver does); a
request that never reached the server is always retried. A PUT of an upload session that fails
so is resumed as GCS documents it: after the same wait, a status query (an empty PUT with
``Content-Range: bytes */<total or *>``) answers how many bytes the session holds (308 with a
``Range`` header), and only the rest is sent again (from the chunk still in memory, or read
again from the caller's bytes or file); at most ``max_attempts`` failed requests per chunk.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit

from lexigram.contracts.infra.storage import StorageError

from lexigram_storage.config import StorageGCSConfig, settings_from
from lexigram_storage.drivers._http import (
    IdleBoundedPayload,
    idle_bounded_body,
    retry_delay,
    retrying,
)
from lexigram_storage.drivers._parts import PartRules, upload
from lexigram_storage.drivers.base import BaseDriver, await_to_end, create_only_conflict
from lexigram_storage.errors import (
    ChecksumMismatchError,
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
from lexigram_storage.payload import DEFAULT_CONTENT_TYPE, Payload, UploadPolicy, UploadRequest

try:
    import aiohttp
    import aiohttp.payload
    from aiohttp.abc import AbstractStreamWriter
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from gcloud.aio.auth import Token
    from gcloud.aio.auth.token import Type as TokenType
    from multidict import CIMultiDictProxy
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'The gcs driver needs gcloud-aio-auth and aiohttp: pip install "lexigram_storage[gcs]"',
        name=exc.name,
    ) from exc

__all__ = ["DIGEST_METADATA_KEY", "GCSDriver", "GCSResponseError", "map_gcs_error"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: every chunk of a resumable upload but the last is a multiple of this
CHUNK_ALIGN = 256 * KiB
#: GCS's object size limit (5 TiB): ranges are clamped to it
MAX_OBJECT_SIZE = 5 * 1024 * GiB
#: the metadata entry holding the hex SHA-256 of the content (the same name as on S3)
DIGEST_METADATA_KEY = "lexigram-sha256"
GOOGLE_API = "https://storage.googleapis.com"
#: the IAM Credentials API (``signBlob``)
IAM_API = "https://iamcredentials.googleapis.com"
SIGNING_HOST = "storage.googleapis.com"
#: one scope for the JSON API and for IAM signBlob
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_GCE_EMAIL_URL = ("http://metadata.google.internal/computeMetadata/v1/instance/"
                  "service-accounts/default/email")
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# GCS's 400 for an upload whose MD5 or CRC32C differs from the one sent with it
_HASH_REJECTED = re.compile(r"doesn't match calculated (MD5|CRC32C)", re.IGNORECASE)
_MEDIA = {"alt": "media"}
_SLICE = 256 * KiB
_JSON = "application/json; charset=UTF-8"
_ITEM_FIELDS = "name,size,contentType,updated,timeCreated,md5Hash,etag,metadata,cacheControl"
_LIST_FIELDS = f"items({_ITEM_FIELDS}),prefixes,nextPageToken"
_PRESIGN_GET_OPTIONS = {"response_content_disposition": "response-content-disposition",
                        "response_content_type": "response-content-type"}
_PRESIGN_PUT_OPTIONS = {"content_type": "content-type"}
# credentials that can sign through IAM signBlob (they act as a service account)
_IAM_SIGNERS = frozenset({TokenType.GCE_METADATA, TokenType.SERVICE_ACCOUNT,
                          TokenType.IMPERSONATED_SERVICE_ACCOUNT})
_T = TypeVar("_T")


class GCSResponseError(aiohttp.ClientResponseError):
    """An error answer (status 400 or more) of the GCS API; ``reason_code`` is Google's reason
    (``notFound``, ``forbidden``, ``conditionNotMet``...) when the answer names one."""

    def __init__(self, response: aiohttp.ClientResponse, body: bytes) -> None:
        self.reason_code, message = _error_text(body, response.reason or "")
        super().__init__(response.request_info, response.history, status=response.status,
                         message=message, headers=response.headers)


class CredentialsError(Exception):
    """No access token could be obtained (the cause is chained)."""


def map_gcs_error(exc: BaseException, backend: str, bucket: str, key: str | None
                  ) -> StorageError | None:
    """The one translation of GCS and HTTP-client errors (``None``: not one of them).

    ============================================  =====================================
    server answer / client failure                error
    ============================================  =====================================
    404 naming the bucket, or to a request that   ``StorageBucketNotFoundError``
    is not about one object (list, upload, the
    bucket's metadata)
    404 to an object request                      ``StorageFileNotFoundError``
    401, 403; no access token obtainable          ``StoragePermissionError``
    412 (``conditionNotMet``)                     ``PreconditionFailedError``
    400 "Provided MD5 hash / CRC32C ... doesn't   ``ChecksumMismatchError``
    match calculated ..." (nothing stored)
    408, 429, 5xx; connection refused/reset/      ``StorageUnavailableError``
    closed, connect and read timeouts
    any other 4xx; a 404 for an upload session    ``StorageRequestRejectedError``
    ============================================  =====================================
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        status = exc.status
        code = getattr(exc, "reason_code", "") or None
        text = f"{status} {code or ''}: {exc.message}".replace("  ", " ")
        details = {"status": status, "error_code": code}
        url = exc.request_info.url
        if status == 404 and "upload_id" in url.query_string:
            return StorageRequestRejectedError(f"the upload session no longer exists ({text})",
                                               backend=backend, key=key, details=details,
                                               cause=exc)
        if status == 404:
            message = exc.message.lower()
            if ("bucket" in message and "not exist" in message) or "/o/" not in url.path:
                return StorageBucketNotFoundError(f"bucket {bucket!r} does not exist",
                                                  backend=backend, key=key, details=details,
                                                  cause=exc)
            return StorageFileNotFoundError(backend=backend, key=key, details=details, cause=exc)
        if status in (401, 403):
            return StoragePermissionError(text, backend=backend, key=key, details=details,
                                          cause=exc)
        if status == 412:
            return PreconditionFailedError(text, backend=backend, key=key, details=details,
                                           cause=exc)
        mismatch = _HASH_REJECTED.search(exc.message) if status == 400 else None
        if mismatch is not None:
            return ChecksumMismatchError(
                f"the server received other bytes than were sent and stored nothing ({text})",
                backend=backend, key=key, cause=exc,
                details={**details, "algorithm": mismatch.group(1).lower()})
        if status in _RETRY_STATUSES or status >= 500:
            return StorageUnavailableError(text, backend=backend, key=key, details=details,
                                           cause=exc)
        return StorageRequestRejectedError(text, backend=backend, key=key, details=details,
                                           cause=exc)
    if isinstance(exc, CredentialsError):
        if isinstance(exc.__cause__, TimeoutError | aiohttp.ClientConnectionError):
            return StorageUnavailableError(str(exc), backend=backend, key=key, cause=exc)
        return StoragePermissionError(
            str(exc), backend=backend, key=key, cause=exc,
            hint="Set credentials_path to a service-account JSON key file or configure "
                 "Application Default Credentials.")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
                  | TimeoutError | ConnectionError):
        return StorageUnavailableError(f"{type(exc).__name__}: {exc}", backend=backend,
                                       key=key, cause=exc)
    return None


@dataclass(frozen=True, slots=True)
class _Reply:
    """An answer read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def data(self) -> dict[str, Any]:
        if not self.body:
            return {}
        data: dict[str, Any] = json.loads(self.body)
        return data


class GCSDriver(BaseDriver):
    """Objects in a Google Cloud Storage bucket (or on fake-gcs-server).

    Args:
        bucket: the bucket name.
        project_id: the project (informational: the credentials name theirs).
        credentials_path: a service-account JSON key file; omit it to use Application Default
            Credentials (or, with ``endpoint_url``, no credentials).
        endpoint_url: the API endpoint of an emulator (``http://127.0.0.1:4443``).
        public_url: custom domain / CDN used by ``get_url``.
        iam_endpoint_url: the IAM Credentials API that signs URLs (``signBlob``) for credentials
            without a private key (default: Google's).
        resumable_threshold: uploads of at least this many bytes use a resumable upload.
        chunk_size: the resumable chunk size, a multiple of 256 KiB.
        max_concurrency: deletes in flight at once in ``delete_many`` and ``clear``.
        connect_timeout / read_timeout: seconds to connect, and to wait for answer bytes.
        max_attempts: attempts per retryable request, including the first.
    """

    driver: ClassVar[str] = "gcs"
    config_model: ClassVar[type[StorageGCSConfig]] = StorageGCSConfig
    #: objects per listing page (``maxResults``; 1000 is the API's largest)
    list_page_size: int = 1000

    def __init__(
        self,
        bucket: str,
        project_id: str | None = None,
        credentials_path: str | None = None,
        *,
        endpoint_url: str | None = None,
        public_url: str | None = None,
        iam_endpoint_url: str | None = None,
        resumable_threshold: int = 8 * MiB,
        chunk_size: int = 16 * MiB,
        max_concurrency: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
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
        self.project_id = settings.project_id
        self.credentials_path = settings.credentials_path
        self.endpoint_url = settings.endpoint_url.rstrip("/") if settings.endpoint_url else None
        self.public_url = settings.public_url.rstrip("/") if settings.public_url else None
        self.iam_endpoint_url = (settings.iam_endpoint_url or IAM_API).rstrip("/")
        self.resumable_threshold = settings.resumable_threshold
        self.chunk_size = settings.chunk_size
        self.max_concurrency = settings.max_concurrency
        self.connect_timeout = settings.connect_timeout
        self.read_timeout = settings.read_timeout
        self.max_attempts = settings.max_attempts
        api = self.endpoint_url or GOOGLE_API
        bucket_path = quote(self._bucket, safe="")
        self._bucket_url = f"{api}/storage/v1/b/{bucket_path}"
        self._objects_url = f"{self._bucket_url}/o"
        self._uploads_url = f"{api}/upload/storage/v1/b/{bucket_path}/o"
        self._session: aiohttp.ClientSession | None = None
        self._token: Token | None = None
        self._private_key: rsa.RSAPrivateKey | None = None

    @property
    def bucket(self) -> str:
        return self._bucket

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} name={self.name!r} bucket={self._bucket!r} "
                f"endpoint={self.endpoint_url!r}>")

    # ------------------------------------------------------------------ session and requests

    def _new_session(self) -> aiohttp.ClientSession:
        """The driver's HTTP session (every request goes through it), with the shared timeouts:
        ``connect_timeout`` to connect, ``read_timeout`` between answer bytes.

        aiohttp silently sends a PUT, GET or DELETE again, once, when its connection drops;
        that is turned off (aiohttp has no public switch): the driver decides what is sent
        again, and a chunk cut mid-body must be resent from where the session ends, not
        from its start."""
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout))
        session._retry_connection = False
        return session

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise StorageUnavailableError("the driver is closed", backend=self.name)
            session = self._session = self._new_session()
        return session

    def _credentials(self) -> Token | None:
        """The access-token source (gcloud-aio-auth: the key file, else ADC), read once;
        ``None`` for an emulator endpoint without ``credentials_path``."""
        if self._token is None and (self.credentials_path is not None or self.endpoint_url is None):
            try:
                # gcloud-aio-auth types its sessions as requests' (its sync twin's) sessions
                self._token = Token(service_file=self.credentials_path,
                                    session=self._client(),  # type: ignore[arg-type]
                                    scopes=SCOPES)
            except (OSError, ValueError, KeyError) as exc:
                raise StorageConfigurationError(
                    f"cannot use the credentials {self.credentials_path or '(ADC)'}: "
                    f"{type(exc).__name__}: {exc}", backend=self.name, cause=exc) from exc
        return self._token

    async def prepare(self) -> None:
        self._client()
        self._credentials()

    async def _close(self) -> None:
        session, self._session, self._token = self._session, None, None
        if session is not None:
            await session.close()

    async def _auth(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        """*headers* with the access token, when the driver has credentials."""
        token = self._credentials()
        if token is None:
            return headers
        try:
            async with asyncio.timeout(self.connect_timeout + self.read_timeout):
                value = await token.get()
        except Exception as exc:
            raise CredentialsError(
                f"could not obtain an access token: {type(exc).__name__}: {exc}") from exc
        return {**(headers or {}), "Authorization": f"Bearer {value}"}

    async def _call(self, method: str, url: str, *, params: dict[str, str] | None = None,
                    headers: dict[str, str] | None = None, data: Any = None,
                    idempotent: bool, accept: tuple[int, ...] = ()) -> _Reply:
        """One request, its answer read whole. An answer of 400 or more raises
        ``GCSResponseError`` unless its status is in *accept*; retried by ``_retrying``.
        *data* is the body, or a function making it (a stream, made again for each attempt)."""
        session = self._client()

        async def attempt() -> _Reply:
            body = idle_bounded_body(data() if callable(data) else data, self.read_timeout)
            # 308 is an upload session's "resume incomplete", not a redirect
            async with session.request(method, url, params=params, data=body,
                                       headers=await self._auth(headers),
                                       allow_redirects=False) as response:
                body = await response.read()
                if response.status >= 400 and response.status not in accept:
                    raise GCSResponseError(response, body)
                return _Reply(response.status, response.headers, body)

        return await self._retrying(attempt, idempotent)

    async def _open(self, url: str, params: dict[str, str], headers: dict[str, str] | None
                    ) -> aiohttp.ClientResponse:
        """A GET whose body the caller streams and releases; retried until its headers."""
        session = self._client()

        async def attempt() -> aiohttp.ClientResponse:
            response = await session.get(url, params=params, headers=await self._auth(headers),
                                         allow_redirects=False)
            if response.status >= 400:
                try:
                    body = await response.read()
                finally:
                    response.release()
                raise GCSResponseError(response, body)
            return response

        return await self._retrying(attempt, True)

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]], idempotent: bool) -> _T:
        """Run *attempt* up to ``max_attempts`` times while its failures are retryable."""
        return await retrying(attempt, self.max_attempts,
                              lambda exc: _retryable(exc, idempotent))

    def _object_url(self, key: str) -> str:
        return f"{self._objects_url}/{quote(key, safe='')}"

    # ------------------------------------------------------------------ errors and infos

    def _map_error(self, exc: BaseException, key: str | None) -> StorageError | None:
        return map_gcs_error(exc, self.name, self._bucket, key)

    def _resource(self, key: str, request: UploadRequest, digest: str | None,
                  md5: str | None = None) -> dict[str, Any]:
        """The object resource sent with an upload (name, content type, metadata...)."""
        metadata = dict(request.metadata)
        if digest is not None:
            metadata[DIGEST_METADATA_KEY] = digest
        resource: dict[str, Any] = {"name": key, "contentType": request.content_type}
        if metadata:
            resource["metadata"] = metadata
        if request.cache_control:
            resource["cacheControl"] = request.cache_control
        if md5 is not None:
            resource["md5Hash"] = md5
        return resource

    def _written_info(self, key: str, payload: Payload, resource: dict[str, Any]) -> ObjectInfo:
        request = payload.request
        return ObjectInfo(
            path=key, size=payload.size, content_type=request.content_type,
            last_modified=_time(resource.get("updated")) or datetime.now(UTC),
            created_at=_time(resource.get("timeCreated")), etag=payload.etag,
            metadata=dict(request.metadata), cache_control=request.cache_control,
        )

    async def _remove_stored(self, key: str, resource: dict[str, Any]) -> None:
        """Delete the object an upload just stored (only that generation of it)."""
        await self._call("DELETE", self._object_url(key),
                         params={"ifGenerationMatch": str(resource.get("generation"))},
                         idempotent=True, accept=(404, 412))

    async def _verify_stored(self, key: str, resource: dict[str, Any], md5: str) -> None:
        """Compare the MD5 the server reports for the stored object with that of the bytes
        sent (the second line, for servers that ignore the hash sent with the upload); on a
        mismatch remove that object (guarded by its generation) and raise."""
        stored = resource.get("md5Hash")
        if not stored or stored == md5:
            return
        await self._remove_stored(key, resource)
        raise ChecksumMismatchError(
            f"the server stored different bytes (md5 {_hex(stored)}) than were sent "
            f"(md5 {_hex(md5)}); the object was removed", backend=self.name, key=key,
            details={"algorithm": "md5", "expected": _hex(md5), "actual": _hex(stored)})

    # ------------------------------------------------------------------ writing

    @property
    def part_rules(self) -> PartRules:
        """How uploads are cut into chunks (the shared upload engine's settings). A file is
        read 1 MiB at a time: its parts stream into one PUT piece by piece, and smaller
        buffers from the worker threads keep the peak RSS down."""
        return PartRules(threshold=self.resumable_threshold, part_size=self.chunk_size,
                         max_concurrency=1, max_part_size=1024 * MiB, max_parts=1 << 31,
                         align=CHUNK_ALIGN, abort_timeout=self.connect_timeout + self.read_timeout,
                         file_read_size=MiB)

    async def _write(self, key: str, payload: Payload) -> ObjectInfo:
        async def put_whole(body: bytes) -> dict[str, Any]:
            return await self._put_single(key, payload, body)

        resource = await upload(payload, self.part_rules, put_whole, _Resumable(self, key, payload))
        return self._written_info(key, payload, resource)

    async def _put_single(self, key: str, payload: Payload, body: bytes) -> dict[str, Any]:
        """One multipart upload request: the object resource, then its bytes."""
        request = payload.request
        md5 = await _md5_of(body)
        resource = self._resource(key, request, payload.etag, md5)
        boundary = f"lexigram-{random.getrandbits(64):016x}"
        data = b"".join([
            f"--{boundary}\r\nContent-Type: {_JSON}\r\n\r\n".encode(),
            json.dumps(resource).encode(),
            f"\r\n--{boundary}\r\nContent-Type: {request.content_type}\r\n\r\n".encode(),
            body, f"\r\n--{boundary}--\r\n".encode()])
        params = {"uploadType": "multipart"}
        if request.create_only:
            params["ifGenerationMatch"] = "0"

        async def commit() -> dict[str, Any]:
            try:
                reply = await self._call(
                    "POST", self._uploads_url, params=params, data=data,
                    headers={"Content-Type": f"multipart/related; boundary={boundary}"},
                    idempotent=not request.create_only)
            except GCSResponseError as exc:
                if request.create_only and exc.status == 412:
                    raise create_only_conflict(self.name, key) from exc
                raise
            stored = reply.data
            await self._verify_stored(key, stored, md5)
            return stored

        # the commit: once sent, the server may store the object, so the call waits for the
        # answer (and its check) even if cancelled (the cancellation guarantee)
        return await await_to_end(commit())

    # ------------------------------------------------------------------ reading

    async def _read(self, key: str, offset: int, length: int | None, chunk_size: int
                    ) -> AsyncIterator[bytes]:
        if length is not None and offset + length > MAX_OBJECT_SIZE:
            length = None  # to the end: no object is bigger
        if length == 0 or offset >= MAX_OBJECT_SIZE:
            if await self._head(key) is None:
                raise StorageFileNotFoundError(backend=self.name, key=key)
            return
        headers = None
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers = {"Range": f"bytes={offset}-{end}"}
        try:
            response = await self._open(self._object_url(key), _MEDIA, headers)
        except GCSResponseError as exc:
            if exc.status == 416:
                return  # the object exists; the range starts at or past its end
            raise
        async with response:
            async for chunk in response.content.iter_chunked(chunk_size):
                yield chunk

    async def _read_all(self, key: str) -> bytes:
        return (await self._call("GET", self._object_url(key), params=_MEDIA,
                                 idempotent=True)).body

    async def _head(self, key: str) -> ObjectInfo | None:
        reply = await self._call("GET", self._object_url(key), params={"fields": _ITEM_FIELDS},
                                 idempotent=True, accept=(404,))
        if reply.status == 404:
            return None
        return _info(key, reply.data)

    # ------------------------------------------------------------------ deleting

    async def _delete(self, key: str) -> bool:
        reply = await self._call("DELETE", self._object_url(key), idempotent=True,
                                 accept=(404,))
        return reply.status != 404

    async def _delete_many(self, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """One DELETE per key, ``max_concurrency`` at a time; a key that fails is reported."""
        limit = asyncio.Semaphore(self.max_concurrency)
        failed: dict[str, str] = {}

        async def delete(key: str) -> None:
            async with limit:
                try:
                    await self._delete(key)
                except Exception as exc:
                    failed[key] = self._translate(exc, key).message

        await asyncio.gather(*(delete(key) for key in keys))
        return [k for k in keys if k not in failed], failed

    # ------------------------------------------------------------------ listing

    async def _pages(self, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The listing pages (``maxResults`` objects each, full metadata), page token by
        page token."""
        params = {**params, "maxResults": str(self.list_page_size), "fields": _LIST_FIELDS}
        while True:
            page = (await self._call("GET", self._objects_url, params=params,
                                     idempotent=True)).data
            yield page
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token

    async def _list(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        params = {"prefix": prefix} if prefix else {}
        if start_after is not None and start_after >= prefix:
            params["startOffset"] = start_after  # inclusive: start_after itself is skipped
        async for page in self._pages(params):
            for item in page.get("items") or ():
                name = str(item["name"])
                if start_after is None or name > start_after:
                    yield _info(name, item)

    async def _list_dir(self, prefix: str, delimiter: str) -> DirListing:
        files: list[ObjectInfo] = []
        prefixes: set[str] = set()
        params = {"delimiter": delimiter, **({"prefix": prefix} if prefix else {})}
        async for page in self._pages(params):
            files.extend(_info(str(item["name"]), item) for item in page.get("items") or ())
            prefixes.update(str(p) for p in page.get("prefixes") or ())
        return DirListing(files=files, prefixes=sorted(prefixes))

    # ------------------------------------------------------------------ copy

    async def _copy(self, src: str, dst: str) -> ObjectInfo:
        """A server-side rewrite keeping the metadata; large objects take several calls, each
        continuing the previous one (``rewriteToken``)."""
        url = f"{self._object_url(src)}/rewriteTo/b/{quote(self._bucket, safe='')}/o/" \
              f"{quote(dst, safe='')}"
        params: dict[str, str] = {}
        while True:
            # any call may be the one that stores the copy: each runs to its end
            result = (await await_to_end(self._call(
                "POST", url, params=params, data=b"{}", headers={"Content-Type": _JSON},
                idempotent=True))).data
            if result.get("done"):
                return _info(dst, result["resource"])
            params["rewriteToken"] = str(result["rewriteToken"])

    # ------------------------------------------------------------------ URLs and health

    def _url(self, key: str) -> str:
        path = quote(key, safe="/~")
        if self.public_url:
            return f"{self.public_url}/{path}"
        return f"{self.endpoint_url or GOOGLE_API}/{quote(self._bucket, safe='')}/{path}"

    async def _presign(self, key: str, expires_in: timedelta, method: str,
                       options: dict[str, Any]) -> str:
        """A V4 signed URL (``GOOG4-RSA-SHA256``): signed with the service-account key, or by
        IAM signBlob for credentials without one."""
        allowed = _PRESIGN_GET_OPTIONS if method == "GET" else _PRESIGN_PUT_OPTIONS
        unknown = set(options) - set(allowed)
        if unknown:
            raise unsupported(self.name, f"get_presigned_url option(s) {sorted(unknown)}",
                              hint=f"{method} URLs accept: {sorted(allowed)}")
        email, sign = await self._signer()
        parts = urlsplit(self.endpoint_url or f"https://{SIGNING_HOST}")
        now = datetime.now(UTC)
        scope = f"{now:%Y%m%d}/auto/storage/goog4_request"
        headers = {"host": parts.netloc}
        query = {"X-Goog-Algorithm": "GOOG4-RSA-SHA256", "X-Goog-Credential": f"{email}/{scope}",
                 "X-Goog-Date": f"{now:%Y%m%dT%H%M%SZ}",
                 "X-Goog-Expires": str(int(expires_in.total_seconds()))}
        for option, value in options.items():
            if value is None:
                continue
            if method == "PUT":  # signed as a header: the client must send it
                headers[allowed[option]] = str(value)
            else:
                query[allowed[option]] = str(value)
        signed_headers = ";".join(sorted(headers))
        query["X-Goog-SignedHeaders"] = signed_headers
        path = f"/{quote(self._bucket, safe='')}/{quote(key, safe='/~')}"
        canonical_query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}"
                                   for k, v in sorted(query.items()))
        canonical_request = "\n".join([
            method, path, canonical_query,
            "".join(f"{name}:{value.strip()}\n" for name, value in sorted(headers.items())),
            signed_headers, "UNSIGNED-PAYLOAD"])
        to_sign = "\n".join(["GOOG4-RSA-SHA256", query["X-Goog-Date"], scope,
                             hashlib.sha256(canonical_request.encode()).hexdigest()])
        signature = (await sign(to_sign.encode())).hex()
        return (f"{parts.scheme}://{parts.netloc}{path}?{canonical_query}"
                f"&X-Goog-Signature={signature}")

    async def _signer(self) -> tuple[str, Callable[[bytes], Awaitable[bytes]]]:
        """The service account that signs URLs and how: locally with its key, or by the IAM
        Credentials API (``signBlob``, at ``iam_endpoint_url``) as the service account the
        credentials act as (impersonated, or the machine's)."""
        token = self._credentials()
        if token is None:
            raise unsupported(self.name, "get_presigned_url (no credentials to sign with)",
                              hint="An emulator endpoint without credentials_path has no key: "
                                   "set credentials_path to a service-account JSON key file.")
        data = token.service_data
        if data.get("private_key") and data.get("client_email"):
            key = self._signing_key(str(data["private_key"]))

            async def sign_locally(blob: bytes) -> bytes:
                return key.sign(blob, padding.PKCS1v15(), hashes.SHA256())

            return str(data["client_email"]), sign_locally
        if token.token_type not in _IAM_SIGNERS and not token.impersonation_uri:
            raise unsupported(
                self.name, f"get_presigned_url ({token.token_type.value} credentials hold no "
                "service-account key and cannot sign through IAM)",
                hint="Use a service-account key (credentials_path) or run as a service account.")
        email = (str(data.get("client_email") or "") or _impersonated_email(token.impersonation_uri)
                 or await self._metadata_email())
        url = (f"{self.iam_endpoint_url}/v1/projects/-/serviceAccounts/"
               f"{quote(email, safe='@')}:signBlob")

        async def sign_by_iam(blob: bytes) -> bytes:
            try:
                reply = await self._call(
                    "POST", url, data=json.dumps({"payload": _b64(blob)}).encode(),
                    headers={"Content-Type": _JSON}, idempotent=True)
                return base64.b64decode(reply.data["signedBlob"], validate=True)
            except GCSResponseError as exc:
                why = f"IAM signBlob for {email} answered {exc.status}: {exc.message}"
                if exc.status in (401, 403):
                    raise StoragePermissionError(
                        f"cannot sign the URL: {why}", backend=self.name,
                        details={"status": exc.status, "error_code": exc.reason_code or None},
                        cause=exc,
                        hint=f"Grant roles/iam.serviceAccountTokenCreator on {email} to the "
                             "credentials, or use a service-account key (credentials_path)."
                    ) from exc
                if exc.status in _RETRY_STATUSES:
                    raise
                raise unsupported(self.name, f"get_presigned_url ({why})") from exc
            except (KeyError, ValueError, TypeError) as exc:
                raise unsupported(self.name, "get_presigned_url (IAM signBlob answered "
                                  f"without a signature: {exc!r})") from exc

        return email, sign_by_iam

    def _signing_key(self, pem: str) -> rsa.RSAPrivateKey:
        if self._private_key is None:
            try:
                key = serialization.load_pem_private_key(pem.encode(), password=None)
            except (ValueError, TypeError) as exc:
                raise StorageConfigurationError(
                    f"the service-account private key cannot be loaded: {exc}",
                    backend=self.name, cause=exc) from exc
            if not isinstance(key, rsa.RSAPrivateKey):
                raise StorageConfigurationError("the service-account key is not an RSA key",
                                                backend=self.name)
            self._private_key = key
        return self._private_key

    async def _metadata_email(self) -> str:
        """The default service account of the machine (GCE, Cloud Run, GKE)."""
        reply = await self._call("GET", _GCE_EMAIL_URL, headers={"Metadata-Flavor": "Google"},
                                 idempotent=True)
        return reply.body.decode().strip()

    async def _ping(self) -> dict[str, Any]:
        reply = await self._call("GET", self._bucket_url, params={"fields": "name,location"},
                                 idempotent=True)
        return {"endpoint": self.endpoint_url or GOOGLE_API,
                "location": reply.data.get("location")}


class _Resumable:
    """One resumable upload session: the upload engine's part sink.

    The engine hands over the bytes in order, one part at a time (``PartRules.max_concurrency``
    is 1, parts are multiples of 256 KiB but the last). Only the request that finalizes the
    upload carries the object's size and the MD5 of the whole content (``X-Goog-Hash``), so it
    carries the last bytes: nothing is stored before it.

    * A seekable file is one streamed PUT that finalizes the upload: the engine's parts flow
      into its body while it is sent (a few parts in memory), and its MD5 is computed before
      (a pass over the file in a worker thread, beside the engine's SHA-256 pass).
    * Bytes in memory go as one streamed PUT of all their 256 KiB blocks but the last, then the
      finalize with the rest (at most 256 KiB) and the MD5 computed meanwhile.
    * If a streamed PUT fails, the session's status says where to resume, and the missing
      bytes are read again (from the caller's bytes, or from the file at its offset).
    * A stream of unknown size goes in chunks of ``chunk_size``, each its own PUT with its
      Content-Length, sent as the engine's pieces (never joined into one buffer); a short last
      chunk is held back for the finalize (else the finalize is empty). A failed chunk is sent
      again from the chunk still in memory (``_send``).

    The MD5 goes with the finalize and is compared with the MD5 the server reports for the
    stored object."""

    def __init__(self, driver: GCSDriver, key: str, payload: Payload) -> None:
        self.driver = driver
        self.key = key
        self.payload = payload
        self.url: str | None = None
        self.offset = 0  # bytes the server has persisted
        self.last: list[bytes | memoryview] = []
        self.md5 = hashlib.md5(usedforsecurity=False)
        # a payload of known size whose bytes can be read again goes as one streamed PUT of
        # ``bulk`` bytes (a file: all; bytes: every 256 KiB block but the last)
        self.total = payload.size_hint
        self.bulk: int | None = None
        self.fed = 0  # bytes handed to the streamed PUT
        self.kept: list[memoryview] | None = None  # in-memory payloads: the bytes, as views
        self.read_again: Callable[[int, int], bytes] | None = None
        self.file_md5: asyncio.Future[bytes] | None = None  # a file's MD5, computed upfront
        self.md5_b64 = ""  # the MD5 of the whole content, known at the finalize
        self.stream: asyncio.Task[_Reply] | None = None
        self.queue: asyncio.Queue[list[memoryview]] = asyncio.Queue(maxsize=1)
        self.final: _Reply | None = None  # the answer that finalized the upload
        self.failures = 0
        if self.total is not None:
            if payload.source_file is None:
                self.kept = []
                self.bulk = (self.total - 1) // CHUNK_ALIGN * CHUNK_ALIGN
            elif self.total >= driver.resumable_threshold:
                self.read_again = _file_reader(payload.source_file)
                if self.read_again is not None:
                    self.bulk = self.total
                    self.file_md5 = asyncio.ensure_future(
                        asyncio.to_thread(_md5_of_file, self.read_again, self.total))
                    # an upload that fails before ``start`` never awaits it
                    self.file_md5.add_done_callback(_retrieve)

    async def start(self, digest: str | None) -> None:
        request = self.payload.request
        params = {"uploadType": "resumable"}
        if request.create_only:
            params["ifGenerationMatch"] = "0"
        reply = await self.driver._call(
            "POST", self.driver._uploads_url, params=params,
            data=json.dumps(self.driver._resource(self.key, request, digest)).encode(),
            headers={"Content-Type": _JSON, "X-Upload-Content-Type": request.content_type},
            idempotent=True)
        self.url = reply.headers["Location"]
        if self.file_md5 is not None:
            self.md5_b64 = _b64(await self.file_md5)

    async def put_part(self, number: int, pieces: list[bytes | memoryview]) -> str:
        if self.file_md5 is not None:  # a file: its MD5 is known
            views = [memoryview(piece).cast("B") for piece in pieces]
            size = self.fed + sum(view.nbytes for view in views)
            if self.total is not None and size > self.total:
                raise StorageError(f"{self.driver.name}: the file uploaded to {self.key!r} "
                                   f"grew while it was read (past {self.total} bytes)")
            if size == self.total:  # its last bytes complete the upload: ``complete`` sends them
                self.last = [views.pop()]
            await self._feed(views)
            return str(number)
        # in a worker thread, one part at a time: the MD5 follows the order of the bytes
        hashing = asyncio.ensure_future(asyncio.to_thread(_hash_pieces, pieces, self.md5))
        if self.bulk is not None:  # the part streams out while it is hashed
            views = [memoryview(piece).cast("B") for piece in pieces]
            streamed = _before(views, self.bulk - self.fed)
            self.last.extend(_after(views, sum(view.nbytes for view in streamed)))
            if streamed:
                if self.kept is not None:
                    self.kept.extend(streamed)
                await self._feed(streamed)
            await hashing
            return str(number)
        await hashing
        if sum(len(piece) for piece in pieces) % CHUNK_ALIGN:
            self.last = pieces  # the last chunk: ``complete`` sends it with the total size
        else:
            await self._send(pieces, None)
        return str(number)

    async def complete(self, parts: list[tuple[int, str]], create_only: bool
                       ) -> dict[str, Any]:
        if self.bulk is not None:
            size = self.fed + sum(len(piece) for piece in self.last)
            if size != self.total:
                raise StorageError(
                    f"{self.driver.name}: the upload of {self.key!r} read {size} bytes, not "
                    f"the {self.total} announced (the file changed while it was read)")
        if self.file_md5 is None:
            self.md5_b64 = _b64(self.md5.digest())
        try:
            if self.file_md5 is not None and self.last:
                # the file's last bytes: with them the server finalizes the upload
                views, self.last = self.last, []
                await self._feed([memoryview(view) for view in views])
            if self.bulk is not None:
                while self.final is None and self.offset < self.bulk:
                    if self.stream is None:
                        self._open_stream()
                    await self._settle()
            reply = self.final
            if reply is None:
                pieces, self.last = self.last, []
                reply = await self._send(pieces, self.offset + sum(len(p) for p in pieces))
        except GCSResponseError as exc:
            if create_only and exc.status == 412:
                raise create_only_conflict(self.driver.name, self.key) from exc
            raise
        resource = reply.data
        await self.driver._verify_stored(self.key, resource, self.md5_b64)
        return resource

    # ---- the streamed PUT

    def _open_stream(self) -> None:
        """Start the PUT of the bytes from ``offset`` to ``bulk``: those handed over already
        (up to ``fed``) are read again, then come the ones ``_feed`` hands over."""
        assert self.url is not None and self.bulk is not None
        first, fed = self.offset, self.fed
        queue: asyncio.Queue[list[memoryview]] = asyncio.Queue(maxsize=1)
        self.queue = queue

        async def source() -> AsyncIterator[list[memoryview]]:
            async for view in self._read_range(first, fed):
                yield [view]
            left = self.bulk - fed  # type: ignore[operator]
            while left > 0:
                views = await queue.get()
                left -= sum(view.nbytes for view in views)
                yield views
                queue.task_done()  # resumed once they were written

        body = _StreamedBody(source(), self.bulk - first, self.driver.read_timeout)
        size, hashes = self._closing()
        span = f"{first}-{self.bulk - 1}" if first < self.bulk else "*"
        headers = {"Content-Type": self.payload.request.content_type,
                   "Content-Range": f"bytes {span}/{size}", **hashes}
        self.stream = asyncio.ensure_future(self.driver._call(
            "PUT", self.url, data=body, headers=headers, idempotent=False))

    def _closing(self) -> tuple[str, dict[str, str]]:
        """The size a streamed PUT declares, and its hash: those of the object when it
        finalizes the upload (a file), else ``*`` and none."""
        if self.file_md5 is None:
            return "*", {}
        return str(self.total), {"X-Goog-Hash": f"md5={self.md5_b64}"}

    async def _feed(self, views: list[memoryview]) -> None:
        """Hand *views* to the streamed PUT (starting or resuming one if needed) and wait
        until they are written, so that two parts at most are in memory (this one, and the
        next one the engine reads meanwhile). Bytes handed over are read again if the PUT
        fails (``_read_range``)."""
        while True:
            if self.stream is None:
                self._open_stream()
            if await self._unless_stream_ends(self.queue.put(views)):
                break
        self.fed += sum(view.nbytes for view in views)
        await self._unless_stream_ends(self.queue.join())

    async def _unless_stream_ends(self, step: Awaitable[None]) -> bool:
        """Run *step* unless the streamed PUT ends first (then settle it): whether it ran."""
        stream = self.stream
        assert stream is not None
        waiter = asyncio.ensure_future(step)
        try:
            await asyncio.wait({waiter, stream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if waiter.done() and not waiter.cancelled():
            return True
        await self._settle()
        return False

    async def _settle(self) -> None:
        """Wait for the streamed PUT to end and take the session's offset from it (after a
        failure, from a status query); it is resumed from there."""
        stream, self.stream = self.stream, None
        assert stream is not None
        before = self.offset
        try:
            reply = await stream
        except Exception as exc:
            await self._failed(exc)
            reply = await self._query()
        else:
            if reply.status == 308 and _persisted(reply.headers.get("Range")) == before:
                await self._failed(StorageUnavailableError(
                    f"the server took none of the bytes from {before} on",
                    backend=self.driver.name, key=self.key))
        if reply.status != 308 and self.file_md5 is not None:
            self.final = reply  # the file's streamed PUT finalized the upload
            return
        self.offset = await self._held(reply, before, self.fed)

    async def _read_range(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """The payload's bytes from *start* to *end*, read again."""
        if self.kept is not None:
            offset = 0
            for view in self.kept:
                low, high = max(start, offset), min(end, offset + view.nbytes)
                if low < high:
                    yield view[low - offset:high - offset]
                offset += view.nbytes
            return
        assert self.read_again is not None
        while start < end:
            size = min(MiB, end - start)
            yield memoryview(await asyncio.to_thread(self.read_again, start, size))
            start += size

    async def _query(self) -> _Reply:
        """The status query: how many bytes the session holds (308 and ``Range``); with the
        object's size, it finalizes a session that holds them all."""
        assert self.url is not None
        size, hashes = self._closing()
        while True:
            try:
                return await self.driver._call(
                    "PUT", self.url, data=b"", idempotent=False,
                    headers={"Content-Type": self.payload.request.content_type,
                             "Content-Range": f"bytes */{size}", **hashes})
            except Exception as exc:
                await self._failed(exc)

    async def _failed(self, exc: Exception) -> None:
        """Count a failed request: raise *exc* when it cannot be retried or was the last
        attempt, else wait before the next."""
        self.failures += 1
        if self.failures >= self.driver.max_attempts or not _retryable(exc, True):
            raise exc
        await asyncio.sleep(retry_delay(self.failures))

    async def _held(self, reply: _Reply, low: int, high: int) -> int:
        """The bytes a session holds from a 308 answer, between *low* and *high*; a session
        finalized before its end (never on GCS) is an error, and what it stored is removed."""
        if reply.status != 308:
            await self.driver._remove_stored(self.key, reply.data)
            raise StorageUnavailableError(
                "the server finalized the upload before its end", backend=self.driver.name,
                key=self.key)
        held = _persisted(reply.headers.get("Range"))
        if not low <= held <= high:
            raise StorageUnavailableError(
                f"the upload session holds {held} bytes, expected {low} to {high}",
                backend=self.driver.name, key=self.key)
        return held

    async def abort(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
        if self.url is not None:
            await self.driver._call("DELETE", self.url, idempotent=False, accept=(499,))

    async def record_digest(self, result: dict[str, Any], digest: str) -> None:
        """A metadata patch guarded by the object's generation (an object written by someone
        else meanwhile is left alone)."""
        await self.driver._call(
            "PATCH", self.driver._object_url(self.key),
            params={"ifGenerationMatch": str(result.get("generation"))},
            data=json.dumps({"metadata": {DIGEST_METADATA_KEY: digest}}).encode(),
            headers={"Content-Type": _JSON}, idempotent=True, accept=(404, 412))

    async def _send(self, pieces: list[bytes | memoryview], total: int | None) -> _Reply:
        """PUT the bytes of *pieces* at the session's offset (``total``: the object's size,
        which makes it the request that finalizes the upload; it carries the MD5 of the whole
        content, which GCS checks before it stores anything). The server may persist less than
        it was sent: the rest is sent again, never what it holds. A request that fails with a
        retryable error is followed, after :func:`retry_delay`, by a status query; at most
        ``max_attempts`` requests fail."""
        assert self.url is not None
        start = self.offset  # where the pieces begin
        end = start + sum(len(piece) for piece in pieces)
        size = "*" if total is None else str(total)
        hashes = {} if total is None else {"X-Goog-Hash": f"md5={self.md5_b64}"}
        self.failures = 0
        query = False  # ask how many bytes the session holds instead of sending
        while True:
            first = self.offset
            headers = {"Content-Type": self.payload.request.content_type, **hashes}
            if query or first == end:
                # the status query; with the total, it finalizes a session holding every byte
                headers["Content-Range"] = f"bytes */{size}"
                data: Any = b""
            else:
                headers["Content-Range"] = f"bytes {first}-{end - 1}/{size}"
                headers["Content-Length"] = str(end - first)
                data = lambda skip=first - start: _after(pieces, skip)  # noqa: E731
            try:
                reply = await self.driver._call("PUT", self.url, data=data, headers=headers,
                                                idempotent=False)
            except Exception as exc:
                await self._failed(exc)
                query = True
                continue
            if reply.status != 308 and total is not None:
                return reply  # 200/201: the upload is finalized
            self.offset = await self._held(reply, start, end)
            if not query and self.offset == first:  # a chunk taken without progress
                await self._failed(StorageUnavailableError(
                    f"the server took none of the bytes from {first} on",
                    backend=self.driver.name, key=self.key))
            query = False
            if self.offset == end and total is None:
                return reply


# ---------------------------------------------------------------------- helpers


def _retryable(exc: Exception, idempotent: bool) -> bool:
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return True  # the request never reached the server
    if not idempotent:
        return False
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status in _RETRY_STATUSES
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
                      | TimeoutError)



def _error_text(body: bytes, reason: str) -> tuple[str, str]:
    """Google's reason code and message from an error answer's body (JSON or text)."""
    try:
        error = json.loads(body)["error"]
        errors = error.get("errors") or [{}]
        return str(errors[0].get("reason") or ""), str(error.get("message") or reason)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body.decode(errors="replace").strip()
        return "", text[:500] or reason


def _impersonated_email(uri: str | None) -> str | None:
    """The service account of an impersonation URL (``.../serviceAccounts/<email>:...``)."""
    if not uri or "/serviceAccounts/" not in uri:
        return None
    return uri.rsplit("/serviceAccounts/", 1)[1].split(":", 1)[0].split("?", 1)[0] or None


def _persisted(header: str | None) -> int:
    """Bytes persisted by an upload session from its ``Range: bytes=0-N`` answer."""
    if not header:
        return 0
    return int(header.rpartition("-")[2]) + 1


class _StreamedBody(aiohttp.payload.Payload):
    """The body of a streamed PUT: *size* bytes from *source*, an async iterator of lists of
    views that may wait for the next bytes; each list is written under the idle deadline of
    :class:`~lexigram_storage.drivers._http.IdleBoundedPayload`. It can be written once."""

    def __init__(self, source: AsyncIterator[list[memoryview]], size: int,
                 idle_timeout: float) -> None:
        super().__init__(source, content_type="application/octet-stream")
        self._size = size  # aiohttp's Content-Length
        self._source = source
        self._idle_timeout = idle_timeout

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed body cannot be read back")

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        raise TypeError("a streamed body cannot be read back")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter,
                                content_length: int | None) -> None:
        async for views in self._source:
            await IdleBoundedPayload(views, self._idle_timeout).write(writer)


def _file_reader(source: Any) -> Callable[[int, int], bytes] | None:
    """A blocking function reading *size* bytes at an offset of the payload of a seekable
    file (from its position now) without moving it: ``os.pread``, or a copy out of an
    ``io.BytesIO``; ``None`` for a file that cannot be read so."""
    try:
        base = int(source.tell())
    except (AttributeError, OSError, ValueError):
        return None
    if isinstance(source, io.BytesIO):
        def from_buffer(offset: int, size: int) -> bytes:
            return source.getvalue()[base + offset:base + offset + size]
        return from_buffer
    try:
        fd = source.fileno()
    except (AttributeError, OSError, ValueError):
        return None

    def from_fd(offset: int, size: int) -> bytes:
        data = os.pread(fd, size, base + offset)
        if len(data) != size:
            raise StorageError(f"the file ended at {base + offset + len(data)} bytes while "
                               "it was read")
        return data

    return from_fd


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of *future* as seen (its exception is raised where it is awaited)."""
    if not future.cancelled():
        future.exception()


def _md5_of_file(read: Callable[[int, int], bytes], size: int) -> bytes:
    md5 = hashlib.md5(usedforsecurity=False)
    for offset in range(0, size, MiB):
        md5.update(read(offset, min(MiB, size - offset)))
    return md5.digest()


def _hash_pieces(pieces: list[bytes | memoryview], md5: Any) -> None:
    for piece in pieces:
        md5.update(piece)


def _before(views: list[memoryview], size: int) -> list[memoryview]:
    """The first *size* bytes of *views* (nothing copied)."""
    head: list[memoryview] = []
    for view in views:
        if size <= 0:
            break
        head.append(view[:size] if view.nbytes > size else view)
        size -= view.nbytes
    return head


def _after(pieces: list[Any], skip: int) -> list[Any]:
    """The bytes of *pieces* after the first *skip*, as views (nothing copied)."""
    rest: list[bytes | memoryview] = []
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        rest.append(memoryview(piece)[skip:] if skip else piece)
        skip = 0
    return rest


async def _md5_of(body: bytes) -> str:
    """The base64 MD5 of a single upload's body (in a worker thread when it is large)."""
    if len(body) > MiB:
        return _b64(await asyncio.to_thread(_md5_digest, body))
    return _b64(_md5_digest(body))


def _md5_digest(body: bytes) -> bytes:
    return hashlib.md5(body, usedforsecurity=False).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _hex(b64: str) -> str:
    try:
        return base64.b64decode(b64).hex()
    except ValueError:
        return b64


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return None


def _info(key: str, resource: dict[str, Any]) -> ObjectInfo:
    """The info of an object from its JSON resource (a listing item or a metadata answer)."""
    metadata = dict(resource.get("metadata") or {})
    digest = metadata.pop(DIGEST_METADATA_KEY, None)
    md5 = resource.get("md5Hash")
    return ObjectInfo(
        path=key,
        size=int(resource.get("size") or 0),
        content_type=str(resource.get("contentType") or DEFAULT_CONTENT_TYPE),
        last_modified=_time(resource.get("updated")) or datetime.now(UTC),
        created_at=_time(resource.get("timeCreated")),
        etag=digest or (_hex(md5) if md5 else resource.get("etag")),
        metadata={str(k).lower(): str(v) for k, v in metadata.items()},
        cache_control=resource.get("cacheControl") or None,
    )
