"""Single-object S3 requests over the driver's own aiohttp session, signed here with SigV4.

Why: aiobotocore spends ~1.2 ms of client CPU on every request on a 2-core machine (cProfile
of 4 KiB PutObjects, bench/bench_s3_small.py: endpoint-ruleset evaluation ~25%, the SigV4
signer ~13%, user-agent building ~7%, event hooks, request/response serialisation): half the
time of a small request to a nearby server, all of it with 32 in flight, and three times
obstore's. This module sends the four requests that small objects are made of (PutObject of
one body, GetObject of a whole object, HeadObject, DeleteObject) with what botocore would send,
at 0.15-0.45 ms. The driver keeps its aioboto3 client for everything else (multipart, copy,
listing, presigning) and takes from it, once, what botocore resolves per request: the URL
prefix, signing region and service of the bucket (read from a presigned URL), and the
credentials object (static, or refreshed by botocore's chain).

Answers are turned into what botocore would have raised, so the driver's error mapping is the
one for both paths: an error status, or a redirect (never followed, as botocore's HTTP session
does not follow one: ``PermanentRedirect``, ``TemporaryRedirect``), becomes a ``ClientError``
with the S3 error code (the XML ``<Code>``, or the status for a bodiless HEAD answer) and
status; a header the HTTP client
refuses to send becomes ``HTTPClientError``; non-ASCII metadata ``ParamValidationError``
(botocore's ``validate_ascii_metadata``); connection failures and timeouts stay aiohttp's and
asyncio's own. Retries follow botocore's standard mode: the same transient and throttling
codes and statuses, the same full-jitter wait (``_http.retry_delay``), ``max_attempts`` in all
(no retry quota). Timeouts are the aioboto3 client's: ``sock_connect`` = ``connect_timeout``,
``sock_read`` = ``read_timeout``, and a body above ``_http.SMALL_BODY`` is sent under the idle
deadline of ``_http.idle_bounded_body``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from xml.etree import ElementTree

import aiohttp
import botocore.exceptions as boto_exc
from aiohttp.helpers import get_env_proxy_for_url
from multidict import CIMultiDictProxy
from yarl import URL

from lexigram_storage.drivers._http import idle_bounded_body, retrying

__all__ = ["DirectS3", "Response"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: botocore's standard retry mode: TransientRetryableChecker and ThrottledRetryableChecker
RETRY_STATUSES = frozenset({500, 502, 503, 504})
RETRY_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "EC2ThrottledException",
})
#: failures of an attempt that botocore retries (connection errors, read timeouts)
RETRY_EXCEPTIONS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError,
                    ConnectionError)


def _retryable(exc: Exception) -> bool:
    """What botocore's standard mode retries: a connection failure or read timeout, or an
    answer with a transient or throttling status or error code."""
    if isinstance(exc, boto_exc.ClientError):
        error = exc.response["Error"]
        status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        return status in RETRY_STATUSES or error["Code"] in RETRY_CODES
    return isinstance(exc, RETRY_EXCEPTIONS)
#: response checksums validated on a GetObject (botocore's without awscrt: no CRC32C/CRC64NVME)
_CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "x-amz-checksum-crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "x-amz-checksum-sha1": lambda data: hashlib.sha1(data).digest(),
    "x-amz-checksum-sha256": lambda data: hashlib.sha256(data).digest(),
}


@dataclass(frozen=True)
class Response:
    """A successful answer: status, headers, body (empty for HEAD)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class DirectS3:
    """Signed single-object requests to one bucket.

    Args:
        probe_url: a URL botocore presigned for the key ``probe_key`` in the bucket: its prefix
            is the bucket's URL, its ``X-Amz-Credential`` the signing region and service.
        credentials: botocore's credentials object of the aioboto3 client (``None``: none found).
        validate_checksums: ask for and check response checksums (``when_supported``).
    """

    def __init__(self, probe_url: str, probe_key: str, credentials: Any, *,
                 connect_timeout: float, read_timeout: float, max_attempts: int,
                 pool_size: int, validate_checksums: bool) -> None:
        parts = urlsplit(probe_url)
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        suffix = "/" + quote(probe_key, safe="/~")
        assert parts.path.endswith(suffix), probe_url
        self.base_path = parts.path[:-len(suffix)]
        scope = parse_qs(parts.query)["X-Amz-Credential"][0].split("/")
        self.region, self.service = scope[2], scope[3]
        self.credentials = credentials
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self.validate_checksums = validate_checksums
        self._signing_key: tuple[str, str, bytes] = ("", "", b"")
        # the proxy from the environment (HTTP_PROXY, NO_PROXY...), looked up once as botocore
        # does: aiohttp's trust_env would look it up, and read ~/.netrc, in a worker thread on
        # every request (bench_s3_small.py: 0.88 ms of client CPU per 4 KiB PUT with it, 0.43
        # ms without; GET 0.65 and 0.33 ms)
        self.proxy: URL | None = None
        self.proxy_auth: aiohttp.BasicAuth | None = None
        with contextlib.suppress(LookupError):
            self.proxy, self.proxy_auth = get_env_proxy_for_url(URL(self.base_url))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                          sock_read=read_timeout),
            # as aiobotocore does: bodies exactly as the server sent them
            auto_decompress=False, skip_auto_headers=("Accept-Encoding",))

    async def close(self) -> None:
        await self.session.close()

    # ------------------------------------------------------------------ the four requests

    async def put_object(self, key: str, body: bytes, headers: dict[str, str],
                         body_sha256: str) -> Response:
        """PutObject with *headers* (lower-case names); *body_sha256* is the hex digest of
        *body* (signed as the payload hash)."""
        for name, value in headers.items():
            if name.startswith("x-amz-meta-") and not value.isascii():
                raise boto_exc.ParamValidationError(
                    report=f"Non ascii characters found in S3 metadata for key "
                           f"{name[11:]!r}, value: {value!r}.  \nS3 metadata can only "
                           f"contain ASCII characters. ")
        return await self._send("PUT", key, "PutObject", headers, body, body_sha256)

    async def get_object(self, key: str) -> Response:
        headers = {"x-amz-checksum-mode": "ENABLED"} if self.validate_checksums else {}
        response = await self._send("GET", key, "GetObject", headers)
        if self.validate_checksums:
            _check_body(response)
        return response

    async def head_object(self, key: str) -> Response:
        return await self._send("HEAD", key, "HeadObject", {})

    async def delete_object(self, key: str) -> Response:
        return await self._send("DELETE", key, "DeleteObject", {})

    # ------------------------------------------------------------------ sending

    async def _send(self, method: str, key: str, operation: str, headers: dict[str, str],
                    body: bytes = b"", body_sha256: str = EMPTY_SHA256) -> Response:
        path = f"{self.base_path}/{quote(key, safe='/~')}"
        url = URL(self.base_url + path, encoded=True)  # sent exactly as signed

        async def attempt() -> Response:
            signed = await self._signed(method, path, headers, body_sha256)
            try:
                # a redirect is an answer, as for botocore: never followed (aiohttp would
                # send the body to the named host, unsigned, and report its answer)
                async with self.session.request(
                        method, url, headers=signed, proxy=self.proxy, proxy_auth=self.proxy_auth,
                        data=idle_bounded_body(body, self.read_timeout) if body else None,
                        allow_redirects=False,
                ) as answer:
                    data = b"" if method == "HEAD" else await answer.read()
            except ValueError as exc:  # aiohttp refusing a header with CR/LF...
                raise boto_exc.HTTPClientError(error=exc) from exc
            if answer.status >= 300:
                raise _client_error(answer.status, answer.reason, answer.headers, data, operation)
            return Response(answer.status, answer.headers, data)

        return await retrying(attempt, self.max_attempts, _retryable)

    async def _signed(self, method: str, path: str, headers: Mapping[str, str],
                      body_sha256: str) -> dict[str, str]:
        """*headers* plus host, date, payload hash, token and the SigV4 Authorization."""
        if self.credentials is None:
            raise boto_exc.NoCredentialsError()
        creds = await self.credentials.get_frozen_credentials()
        now = datetime.now(UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        signed = {**headers, "host": self.host, "x-amz-date": amz_date,
                  "x-amz-content-sha256": body_sha256}
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        header_names = ";".join(names)
        canonical = "\n".join([
            method, path, "",
            *(f"{name}:{' '.join(signed[name].split())}" for name in names),
            "", header_names, body_sha256])
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._key(creds.secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                   f"SignedHeaders={header_names}, Signature={signature}")
        return signed

    def _key(self, secret: str, day: str) -> bytes:
        """The SigV4 signing key of *secret* on *day*: four HMACs, derived once a day."""
        cached_secret, cached_day, key = self._signing_key
        if cached_secret != secret or cached_day != day:
            key = f"AWS4{secret}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._signing_key = (secret, day, key)
        return key


def _client_error(status: int, reason: str | None, headers: CIMultiDictProxy[str], body: bytes,
                  operation: str) -> boto_exc.ClientError:
    """The ``ClientError`` botocore raises for an error answer: code and message from the XML
    body, else the status and its reason phrase (a HEAD answer has no body)."""
    code, message = str(status), reason or ""
    if body:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            pass
        else:
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
    return boto_exc.ClientError(
        {"Error": {"Code": code, "Message": message},
         "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)}},
        operation)


def _check_body(response: Response) -> None:
    """Check a GetObject body against the first full-object checksum the server returned,
    as botocore does (a multipart upload's composite checksum, "...-N", is not checked)."""
    for header, compute in _CHECKSUMS.items():
        expected = response.headers.get(header)
        if expected and "-" not in expected:
            actual = base64.b64encode(compute(response.body)).decode()
            if actual != expected:
                raise boto_exc.FlexibleChecksumError(
                    error_msg=f"Expected checksum {expected} did not match calculated "
                              f"checksum: {actual}")
            return
