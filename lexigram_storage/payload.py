"""Upload payloads: every accepted input becomes one async stream of byte chunks.

``Payload`` is the one place where an upload's bytes are read, counted, hashed and checked:
the size limit and the expected checksum are enforced while the bytes pass, so a driver that
consumes the payload completely before it commits anything can never store a rejected upload.
Nothing here reads a file object or an iterator whole.

Upload data is bytes: ``bytes``/``bytearray``/``memoryview``, a ``str`` (stored as UTF-8), a
binary file object (sync or async ``read`` returning bytes), or an (async) iterator of bytes (or
str chunks, encoded as UTF-8). A text-mode file (``open(p, "r")``, ``io.StringIO``, any file
whose ``read`` returns ``str``) is refused with ``InvalidPayloadError`` (a ``TypeError``): its
newlines and encoding would be translated, so the stored bytes would differ from the file's.

The metadata and header rule
----------------------------

One rule on every driver: what Amazon S3, Google Cloud Storage and Azure Blob Storage *all*
accept unchanged, so an upload that works on one backend works on every other and reads back
exactly as written. Anything else raises ``InvalidUploadOptionError`` (a ``ValueError``) naming
the field, the backend and the key, before any byte is read; nothing is stored.

- **Metadata names**: ASCII letters, digits and ``_``, not starting with a digit (Azure requires
  C# identifiers: no ``-``), case-insensitive and stored lower-case (S3 and Azure do not keep
  case), so two names differing only in case are refused. Names starting with ``lexigram`` are
  reserved for the drivers' own entries.
- **Metadata values**: ``str`` (an ``int`` is written in decimal), 1 to
  ``MAX_HEADER_VALUE_CHARS`` printable ASCII characters (``0x20``-``0x7E``), no leading or
  trailing space (values travel as HTTP headers: no control characters, no CR/LF, and HTTP
  trims surrounding whitespace; S3 refuses non-ASCII; some Azure SDKs drop empty values).
  Percent-encode or base64 anything else.
- **Metadata total**: names plus values at most ``MAX_METADATA_BYTES`` (1,920) bytes: S3's
  2 KiB limit on user metadata (the strictest: GCS and Azure allow 8 KiB) minus 128 bytes
  reserved for the driver's own entries (the S3 driver records the SHA-256 etag there).
- **Content type and cache control**: 1 to ``MAX_HEADER_VALUE_CHARS`` (1,024) printable ASCII
  characters, no leading or trailing space. An empty or omitted content type is guessed from
  the key; an empty or omitted cache control means none.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import mimetypes
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Final

from lexigram.contracts.infra.storage import UploadOptions

from lexigram_storage.errors import (
    ChecksumMismatchError,
    InvalidPayloadError,
    InvalidUploadOptionError,
    QuotaExceededError,
)

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_HEADER_VALUE_CHARS",
    "MAX_METADATA_BYTES",
    "READ_CHUNK_SIZE",
    "Payload",
    "UploadPolicy",
    "UploadRequest",
    "check_content_type",
    "content_digest",
    "digest_fd",
    "guess_content_type",
    "new_digest",
]

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
READ_CHUNK_SIZE: Final = 1024 * 1024
_HASHES: Final = ("md5", "sha1", "sha256", "sha512")
_DIGEST_BLOCK: Final = 4 * 1024 * 1024
_HEX_LENGTHS: Final = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
#: names plus values of the user metadata, in bytes (S3's 2 KiB minus 128 for driver entries)
MAX_METADATA_BYTES: Final = 2048 - 128
#: characters of one metadata value, of the content type and of the cache control
MAX_HEADER_VALUE_CHARS: Final = 1024
_RESERVED_METADATA_PREFIX: Final = "lexigram"
_METADATA_NAME = re.compile(r"[a-z_][a-z0-9_]*")
# printable ASCII without leading or trailing space (a lone character must not be a space)
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_header_value = _HEADER_VALUE.fullmatch
#: the digest behind every ``FileInfo.etag``, on every driver (SHA-NI makes it 2-3x faster
#: than MD5 on current x86 and ARM CPUs)
new_digest: Final = hashlib.sha256


def content_digest(data: bytes | bytearray | memoryview) -> str:
    """The etag of *data*: its hex SHA-256."""
    return new_digest(data).hexdigest()


def digest_fd(fd: int, position: int = 0, size: int | None = None) -> str | None:
    """The etag of the *size* bytes (default: to the end) of an open file from *position*,
    read with ``os.pread`` so the file position does not move; ``None`` when the file ends
    before *size* bytes. Blocking: call it in a worker thread."""
    digest = new_digest()
    end = None if size is None else position + size
    while end is None or position < end:
        want = _DIGEST_BLOCK if end is None else min(_DIGEST_BLOCK, end - position)
        block = os.pread(fd, want, position)
        if not block:
            return None if end is not None else digest.hexdigest()
        digest.update(block)
        position += len(block)
    return digest.hexdigest()

_MIMES = mimetypes.MimeTypes()  # Python's built-in table only: the same on every machine
# Suffixes the stdlib treats as encodings or does not know (in Python 3.11).
_EXTRA_TYPES: Final = {
    ".gz": "application/gzip", ".tgz": "application/gzip", ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz", ".zst": "application/zstd", ".br": "application/x-brotli",
    ".md": "text/markdown", ".yaml": "application/yaml", ".yml": "application/yaml",
    ".avif": "image/avif", ".heic": "image/heic", ".woff2": "font/woff2", ".woff": "font/woff",
    ".mjs": "text/javascript", ".wasm": "application/wasm", ".ndjson": "application/x-ndjson",
}


@lru_cache(maxsize=1024)
def _guess_by_suffix(suffix: str) -> str | None:
    return _EXTRA_TYPES.get(suffix) or _MIMES.guess_type("x" + suffix, strict=False)[0]


def guess_content_type(key: str) -> str:
    """The content type for *key* from its extension, else ``application/octet-stream``."""
    name = key.rpartition("/")[2]
    dot = name.rfind(".")
    if dot <= 0:
        return DEFAULT_CONTENT_TYPE
    return _guess_by_suffix(name[dot:].lower()) or DEFAULT_CONTENT_TYPE


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    """What a backend accepts: a size limit in bytes and MIME patterns (``image/*``)."""

    max_bytes: int | None = None
    allowed_mime_types: tuple[str, ...] = ()

    def allows_type(self, content_type: str) -> bool:
        if not self.allowed_mime_types:
            return True
        base = content_type.split(";", 1)[0].strip().lower()
        return any(fnmatchcase(base, pattern.lower()) for pattern in self.allowed_mime_types)


@dataclass(slots=True)
class UploadRequest:
    """The resolved options of one upload (explicit values, then ``UploadOptions``, then guesses)."""

    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    cache_control: str | None = None
    public: bool = False
    checksum: tuple[str, str] | None = None
    create_only: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        key: str,
        content_type: UploadOptions | str | None,
        options: Mapping[str, Any],
        *,
        backend: str,
        extra_allowed: frozenset[str] = frozenset(),
    ) -> UploadRequest:
        opts = dict(options)
        base = content_type if isinstance(content_type, UploadOptions) else None
        if content_type is not None and base is None and not isinstance(content_type, str):
            raise TypeError(
                f"{backend}: content_type must be a str or UploadOptions, "
                f"not {type(content_type).__name__}"
            )
        explicit_type = opts.pop("content_type", None) or (
            content_type if isinstance(content_type, str) else (base.content_type if base else None)
        )
        metadata = opts.pop("metadata", None)
        if metadata is None and base is not None:
            metadata = base.metadata
        cache_control = opts.pop("cache_control", base.cache_control if base else None)
        public = bool(opts.pop("public", base.public if base else False))
        checksum = _parse_checksum(opts.pop("checksum", None), backend=backend, key=key)
        if_none_match = opts.pop("if_none_match", None)
        if if_none_match not in (None, "*"):
            raise ValueError(f"{backend}: if_none_match supports only '*', got {if_none_match!r}")
        unknown = set(opts) - extra_allowed
        if unknown:
            accepted = sorted({"content_type", "metadata", "cache_control", "public", "checksum",
                               "if_none_match", *extra_allowed})
            raise TypeError(
                f"{backend}: unknown upload option(s) {sorted(unknown)}; accepted: {accepted}"
            )
        return cls(
            content_type=(check_content_type(explicit_type, backend=backend, key=key)
                          if explicit_type else guess_content_type(key)),
            metadata=_check_metadata(metadata, backend=backend, key=key),
            cache_control=(_check_header("cache_control", cache_control, backend=backend, key=key)
                           if cache_control else None),
            public=public,
            checksum=checksum,
            create_only=if_none_match == "*",
            extra=opts,
        )


def _invalid(field: str, problem: str, *, backend: str, key: str) -> InvalidUploadOptionError:
    return InvalidUploadOptionError(f"{field} {problem} (see the metadata and header rule)",
                                    backend=backend, key=key, details={"field": field})


def _check_header(field: str, value: Any, *, backend: str, key: str) -> str:
    """*value* if it is a valid header value for *field* (the rule in the module docstring)."""
    if not isinstance(value, str):
        raise _invalid(field, f"must be a str, not {type(value).__name__}", backend=backend, key=key)
    if len(value) <= MAX_HEADER_VALUE_CHARS and _header_value(value):
        return value
    if not value:
        problem = "must not be empty"
    elif len(value) > MAX_HEADER_VALUE_CHARS:
        problem = f"is longer than {MAX_HEADER_VALUE_CHARS} characters"
    elif value != value.strip(" "):
        problem = "must not start or end with a space"
    else:
        bad = next(c for c in value if not " " <= c <= "~")
        problem = (f"contains {bad!r}: only printable ASCII is allowed (no control characters, "
                   "no CR/LF, no non-ASCII: percent-encode or base64 such values)")
    raise _invalid(field, problem, backend=backend, key=key)


def check_content_type(value: Any, *, backend: str, key: str) -> str:
    """*value* if it is a valid content type, else ``InvalidUploadOptionError``."""
    return _check_header("content_type", value, backend=backend, key=key)


def _check_metadata(metadata: Mapping[str, Any] | None, *, backend: str, key: str
                    ) -> dict[str, str]:
    """The metadata with lower-cased names, if it follows the rule in the module docstring."""
    if not metadata:
        return {}
    if not isinstance(metadata, Mapping):
        raise _invalid("metadata", f"must be a mapping of str to str, not {type(metadata).__name__}",
                       backend=backend, key=key)
    clean: dict[str, str] = {}
    total = 0
    for raw_name, value in metadata.items():
        field = f"metadata[{raw_name!r}]"
        name = raw_name.lower() if isinstance(raw_name, str) else ""
        if not _METADATA_NAME.fullmatch(name) or not name.isascii():
            raise _invalid(field, "is not a valid metadata name: use ASCII letters, digits and "
                           "'_', not starting with a digit (no '-')", backend=backend, key=key)
        if name.startswith(_RESERVED_METADATA_PREFIX):
            raise _invalid(field, f"is reserved: names starting with "
                           f"{_RESERVED_METADATA_PREFIX!r} belong to the drivers",
                           backend=backend, key=key)
        if name in clean:
            raise _invalid(field, "repeats another name: metadata names are case-insensitive",
                           backend=backend, key=key)
        if type(value) is int:
            value = str(value)
        clean[name] = _check_header(field, value, backend=backend, key=key)
        total += len(name) + len(value)
    if total > MAX_METADATA_BYTES:
        raise _invalid("metadata", f"is {total} bytes (names plus values); the limit is "
                       f"{MAX_METADATA_BYTES}", backend=backend, key=key)
    return clean


def _parse_checksum(value: Any, *, backend: str, key: str) -> tuple[str, str] | None:
    """``"sha256:<hex>"`` (md5, sha1, sha256, sha512), or a bare hex digest whose length names
    the algorithm (32: md5, 40: sha1, 64: sha256, 128: sha512)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{backend}: checksum must be a str like 'sha256:<hex>'")
    algo, sep, digest = value.partition(":")
    if not sep:
        digest = value.strip()
        guessed = _HEX_LENGTHS.get(len(digest))
        if guessed is None:
            raise ValueError(
                f"{backend}: checksum {value!r} for key {key!r} is not a hex md5, sha1, sha256 "
                "or sha512 digest; name the algorithm, like 'sha256:<hex>'"
            )
        algo = guessed
    algo = algo.lower().replace("-", "")
    if algo not in _HASHES:
        raise ValueError(f"{backend}: checksum algorithm {algo!r} is not one of {list(_HASHES)}")
    return algo, digest.strip().lower()


class Payload:
    """The bytes of one upload as an async chunk iterator, checked as they pass.

    Iterate it once. While iterating it counts the bytes (``size``), computes the SHA-256 used
    as the object's etag and, when asked, a second digest for the expected checksum. Exceeding
    the size limit raises ``QuotaExceededError`` at the chunk that crosses it; a wrong checksum
    raises ``ChecksumMismatchError`` after the last chunk, before the iteration ends. A driver
    therefore commits only after the iteration finished normally. Chunks of an OS file are read
    and hashed together in a worker thread (hashlib releases the GIL), off the event loop.
    """

    __slots__ = ("_check", "_digest", "_file", "_iter", "_raw", "_threaded", "backend",
                 "chunk_size", "key", "max_bytes", "request", "size", "size_hint", "source_file")

    def __init__(
        self,
        data: Any,
        request: UploadRequest,
        *,
        backend: str,
        key: str,
        policy: UploadPolicy | None = None,
        chunk_size: int = READ_CHUNK_SIZE,
    ) -> None:
        self.backend = backend
        self.key = key
        self.request = request
        #: bytes read per chunk from a file; a driver may raise it before iterating (e.g. to
        #: read a whole multipart part per worker-thread hop)
        self.chunk_size = chunk_size
        self.max_bytes = policy.max_bytes if policy is not None else None
        self.size = 0
        self._digest = new_digest()
        self._check = None if request.checksum is None else hashlib.new(request.checksum[0])
        if policy is not None and not policy.allows_type(request.content_type):
            raise QuotaExceededError(
                f"content type {request.content_type!r} is not allowed "
                f"(allowed: {list(policy.allowed_mime_types)})",
                backend=backend,
                key=key,
            )
        self._file: Any = None  # a binary file with a synchronous read()
        self._iter: AsyncIterator[bytes] | None = None
        #: the caller's binary file when its size is known upfront (seekable), else ``None``:
        #: a driver may pre-read it (e.g. to hash it) as long as it restores the position
        self.source_file: Any = None
        if type(data) is bytes or isinstance(data, bytearray | memoryview | str):
            self._raw: bytes | None = _as_bytes(data, backend, key)
            self.size_hint: int | None = len(self._raw)
        else:
            if isinstance(data, io.TextIOBase):
                raise _text_mode(backend, key)
            self._raw = None
            read = getattr(data, "read", None)
            if read is not None and not inspect.iscoroutinefunction(read):
                self.size_hint = _remaining(data)
                self.source_file = data if self.size_hint is not None else None
                self._file = data
            else:
                self._iter = _source(data, chunk_size, backend=backend, key=key)
                self.size_hint = None
        # OS files are read off the event loop, one hop per chunk; in-memory files inline
        self._threaded = self._file is not None and _is_os_file(self._file)
        if self.size_hint is not None:
            self._check_size(self.size_hint)

    @property
    def etag(self) -> str:
        """Hex SHA-256 of the bytes read so far (the whole content once iteration ended)."""
        return self._digest.hexdigest()

    def _check_size(self, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise QuotaExceededError(
                f"upload exceeds the size limit of {self.max_bytes} bytes",
                backend=self.backend,
                key=self.key,
                details={"limit_bytes": self.max_bytes},
            )

    def _take(self, chunk: bytes) -> None:
        """Count and hash one chunk (on the loop, or in the worker thread that read it)."""
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self._check_size(self.size)
        self._digest.update(chunk)
        if self._check is not None:
            self._check.update(chunk)

    def _read_file(self) -> bytes:
        chunk = _file_bytes(self._file.read(self.chunk_size), self.backend, self.key)
        if chunk:
            self._take(chunk)
        return chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._raw is not None:
            raw, self._raw = self._raw, None
            if raw:
                self._take(raw)
                yield raw
        elif self._file is not None:
            read, threaded = self._read_file, self._threaded
            while chunk := (await asyncio.to_thread(read) if threaded else read()):
                yield chunk
        elif self._iter is not None:
            take = self._take
            async for chunk in self._iter:
                if chunk:
                    take(chunk)
                    yield chunk
        self._verify()

    def prehash_job(self) -> Callable[[], str | None] | None:
        """A blocking function returning the hex SHA-256 of the whole payload of a seekable
        file without moving its position (``os.pread``; ``None`` when the file ends early or
        cannot be read that way), or ``None`` when the payload is no such file. The position
        is taken now, before anything reads the file. A driver runs it in a worker thread to
        know the etag before it starts a multipart upload (saving the step that records the
        digest afterwards); if the file changes meanwhile, iteration still computes the
        digest of what was actually sent (``etag``)."""
        source, size = self.source_file, self.size_hint
        if source is None or size is None:
            return None
        try:
            position = int(source.tell())
        except (AttributeError, OSError, ValueError):
            return None
        try:
            fd = source.fileno()
        except (AttributeError, OSError, ValueError):
            getbuffer = getattr(source, "getbuffer", None)  # io.BytesIO
            if getbuffer is None:
                return None

            def from_buffer() -> str | None:
                with getbuffer() as view, view[position:position + size] as window:
                    return content_digest(window)

            return from_buffer

        def from_fd() -> str | None:
            try:
                return digest_fd(fd, position, size)
            except OSError:
                return None

        return from_fd

    def take_bytes(self) -> bytes | None:
        """The whole payload, checked, when it was given in memory (bytes or str); ``None`` for
        files and iterators (iterate those). Lets drivers skip the async iteration for the
        common small upload; like iteration, it can be done once."""
        raw = self._raw
        if raw is None:
            return None
        self._raw = None
        self._take(raw)
        self._verify()
        return raw

    async def read_all(self) -> bytes:
        """The whole payload as bytes (for drivers that store or send it in one piece)."""
        raw = self.take_bytes()
        if raw is not None:
            return raw
        parts = [chunk async for chunk in self]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _verify(self) -> None:
        if self._check is None or self.request.checksum is None:
            return
        algo, expected = self.request.checksum
        actual = self._check.hexdigest()
        if actual != expected:
            raise ChecksumMismatchError(
                f"{algo} checksum mismatch: expected {expected}, got {actual}",
                backend=self.backend,
                key=self.key,
                details={"algorithm": algo, "expected": expected, "actual": actual},
            )


def _as_bytes(chunk: Any, backend: str, key: str) -> bytes:
    if type(chunk) is bytes:
        return chunk
    if isinstance(chunk, bytes | bytearray | memoryview):
        return bytes(chunk)
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    raise InvalidPayloadError(
        f"upload chunks must be bytes-like or str, not {type(chunk).__name__}",
        backend=backend, key=key)


def _text_mode(backend: str, key: str) -> InvalidPayloadError:
    return InvalidPayloadError(
        "the file is open in text mode, which would change its bytes (newlines, encoding); "
        "open it in binary mode ('rb')", backend=backend, key=key)


def _file_bytes(chunk: Any, backend: str, key: str) -> bytes:
    """A chunk read from a file: bytes-like; ``str`` means a text-mode file (refused)."""
    if isinstance(chunk, str):
        raise _text_mode(backend, key)
    return _as_bytes(chunk, backend, key)


def _source(data: Any, chunk_size: int, *, backend: str, key: str) -> AsyncIterator[bytes]:
    """An async chunk iterator over an async file object or an (async) iterator *data*
    (in-memory payloads and files with a synchronous ``read`` are handled by ``Payload``)."""
    read = getattr(data, "read", None)
    if read is not None:
        return _async_file(read, chunk_size, backend, key)
    if hasattr(data, "__aiter__"):
        return _async_iter(data, backend, key)
    if isinstance(data, Iterator):
        return _sync_iter(data, backend, key)
    raise InvalidPayloadError(
        f"cannot upload {type(data).__name__}; pass bytes, str, a binary file object "
        "or an async iterator of bytes", backend=backend, key=key)


def _remaining(f: Any) -> int | None:
    try:
        if not f.seekable():
            return None
        pos = f.tell()
        end = f.seek(0, 2)
        f.seek(pos)
        return int(end - pos)
    except (AttributeError, OSError, ValueError):
        return None


def _is_os_file(f: Any) -> bool:
    try:
        f.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


async def _async_file(read: Any, chunk_size: int, backend: str, key: str
                      ) -> AsyncIterator[bytes]:
    while True:
        chunk = await read(chunk_size)
        if not chunk:
            if isinstance(chunk, str):
                raise _text_mode(backend, key)
            return
        yield _file_bytes(chunk, backend, key)


async def _async_iter(it: Any, backend: str, key: str) -> AsyncIterator[bytes]:
    async for chunk in it:
        yield _as_bytes(chunk, backend, key)


async def _sync_iter(it: Iterator[Any], backend: str, key: str) -> AsyncIterator[bytes]:
    for chunk in it:
        yield _as_bytes(chunk, backend, key)
