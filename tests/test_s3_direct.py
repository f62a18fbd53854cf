"""S3 driver behaviour at the HTTP level, on both request paths: create-only uploads whose
answer was lost, metadata header names in any case, redirects. Real servers only: SeaweedFS
behind a small fault proxy, or a local aiohttp server answering what the test needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lexigram_storage.drivers.s3 import MiB, S3Driver
from lexigram_storage.errors import StorageRequestRejectedError
from tests.emulators import HOST, S3Settings, create_bucket, free_port
from tests.test_s3 import sha256

#: hop-by-hop and length headers the proxy leaves to aiohttp
_HOP = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]  # lower-case names


class S3Proxy:
    """Forwards every request to an S3 server as received (the signature stays valid) and
    its answer back, recording each request in ``seen``. ``drop()``: forward the next
    matching request, then close the connection instead of answering (a lost answer).
    ``canonical_names``: send the answer's header names in Go's canonical form
    (``X-Amz-Meta-Lexigram-Sha256``), as MinIO, Traefik or Caddy do."""

    def __init__(self, upstream: str, *, canonical_names: bool = False) -> None:
        self.upstream = upstream
        self.canonical_names = canonical_names
        self.seen: list[Seen] = []
        #: the header names of the answers, as sent
        self.answered_names: set[str] = set()
        self._drops: list[Callable[[Seen], bool]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.endpoint = ""

    def drop(self, match: Callable[[Seen], bool]) -> None:
        self._drops.append(match)

    async def __aenter__(self) -> S3Proxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, HOST, port).start()
        self.endpoint = f"http://{HOST}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        seen = Seen(request.method, request.path_qs,
                    {k.lower(): v for k, v in request.headers.items()})
        self.seen.append(seen)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers,
                data=body or None, allow_redirects=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding")) as answer:
            content = await answer.read()
            for match in self._drops:
                if match(seen):
                    self._drops.remove(match)
                    assert request.transport is not None
                    request.transport.close()  # the answer never arrives
                    raise ConnectionResetError("answer dropped by the test proxy")
            out = web.Response(status=answer.status,
                               body=content if request.method != "HEAD" else None)
            for name, value in answer.headers.items():
                # a HEAD answer keeps the length of the object it describes
                if name.lower() not in _HOP or (request.method == "HEAD"
                                                and name.lower() == "content-length"):
                    sent = _canonical(name) if self.canonical_names else name
                    self.answered_names.add(sent)
                    out.headers.add(sent, value)
            return out


def _canonical(name: str) -> str:
    """Go's ``http.CanonicalHeaderKey``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@pytest.fixture
async def weed_bucket(seaweedfs_server: S3Settings, unique_name: str) -> str:
    await create_bucket(seaweedfs_server, unique_name)
    return unique_name


def proxied_driver(s: S3Settings, endpoint: str, bucket: str, direct: bool,
                   **kw: Any) -> S3Driver:
    return S3Driver(bucket, region=s.region, access_key=s.access_key, secret_key=s.secret_key,
                    endpoint_url=endpoint, addressing_style="path", connect_timeout=2,
                    read_timeout=10, max_attempts=3, multipart_threshold=5 * MiB,
                    multipart_chunk_size=5 * MiB, direct_requests=direct, name="s3-proxied",
                    **kw)


# ---------------------------------------------------------------- metadata header names


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "aioboto3"])
async def test_metadata_header_names_in_any_case(seaweedfs_server: S3Settings,
                                                 weed_bucket: str, direct: bool) -> None:
    """A server or proxy sending ``X-Amz-Meta-Lexigram-Sha256`` (Go's canonical header names)
    changes nothing: the etag is still the SHA-256, the entry stays hidden, names read back
    lower-case."""
    raw = b"canonical names"
    async with S3Proxy(seaweedfs_server.endpoint_url, canonical_names=True) as proxy, \
            proxied_driver(seaweedfs_server, proxy.endpoint, weed_bucket, direct) as store:
        await store.upload("meta/case.txt", raw, metadata={"trace_id": "7"})
        info = await store.info("meta/case.txt")
        assert "X-Amz-Meta-Lexigram-Sha256" in proxy.answered_names
        assert (info.etag, info.metadata) == (sha256(raw), {"trace_id": "7"})
        assert [i.metadata async for i in store.list("meta/")] == [{"trace_id": "7"}]


# ---------------------------------------------------------------- redirects


async def test_direct_path_does_not_follow_redirects(unique_name: str) -> None:
    """A 307 answer is an error like any other, as botocore raises it (``TemporaryRedirect``):
    the body is never sent to the host named in ``Location``, without its signature."""
    elsewhere: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        body = b"" if request.method == "HEAD" else (
            b"<Error><Code>TemporaryRedirect</Code><Message>Please re-send this request to "
            b"the specified temporary endpoint</Message></Error>")
        return web.Response(status=307, body=body,
                            headers={"Location": target + request.path_qs})

    async def other_host(request: web.Request) -> web.Response:
        elsewhere.append(f"{request.method} {request.path}")
        await request.read()
        return web.Response(status=200, headers={"ETag": '"x"'})

    runners = []
    try:
        endpoints = []
        for handler in (redirect, other_host):
            runner = web.AppRunner(web.Application(), access_log=None)
            runner.app.router.add_route("*", "/{tail:.*}", handler)
            await runner.setup()
            runners.append(runner)
            port = free_port()
            await web.TCPSite(runner, HOST, port).start()
            endpoints.append(f"http://{HOST}:{port}")
        target = endpoints[1]
        async with S3Driver(unique_name, region="us-east-1", access_key="k", secret_key="s",
                            endpoint_url=endpoints[0], addressing_style="path",
                            max_attempts=2) as store:
            with pytest.raises(StorageRequestRejectedError) as rejected:
                await store.upload("r/a.txt", b"x")
            details = rejected.value.details
            assert (details["status"], details["error_code"]) == (307, "TemporaryRedirect")
            with pytest.raises(StorageRequestRejectedError):
                await store.download("r/a.txt")
            with pytest.raises(StorageRequestRejectedError):
                await store.info("r/a.txt")
            assert store._direct is not None
        assert elsewhere == []
    finally:
        for runner in runners:
            await runner.cleanup()
