"""S3 driver behaviour at the HTTP level, on both request paths: create-only uploads whose
answer was lost, metadata header names in any case, redirects. Real servers only: SeaweedFS
behind a small fault proxy, or a local aiohttp server answering what the test needs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from lexigram_storage.drivers.s3 import MiB, S3Driver
from lexigram_storage.errors import (
    PreconditionFailedError,
    StorageRequestRejectedError,
)
from lexigram_storage.events import FileUploadedEvent, StorageEvents
from tests.emulators import HOST, HttpProxy, S3Settings, create_bucket, free_port, s3_client_for
from tests.test_s3 import sha256

#: hop-by-hop and length headers the proxy leaves to aiohttp
_HOP = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]  # lower-case names


class S3Proxy(HttpProxy):
    """Forwards every request to an S3 server as received (the signature stays valid) and
    its answer back, recording each request in ``seen``. ``drop()``: forward the next
    matching request, then close the connection instead of answering, or answer *status*
    instead of the server's answer (a gateway giving up after the server got the request).
    ``canonical_names``: send the answer's header names in Go's canonical form
    (``X-Amz-Meta-Lexigram-Sha256``), as MinIO, Traefik or Caddy do."""

    def __init__(self, upstream: str, *, canonical_names: bool = False) -> None:
        super().__init__(upstream)
        self.canonical_names = canonical_names
        self.seen: list[Seen] = []
        #: the header names of the answers, as sent
        self.answered_names: set[str] = set()
        self._drops: list[tuple[Callable[[Seen], bool], int | None]] = []

    def drop(self, match: Callable[[Seen], bool], status: int | None = None) -> None:
        self._drops.append((match, status))

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
            for match, status in self._drops:
                if match(seen):
                    self._drops.remove((match, status))
                    if status is not None:
                        return web.Response(status=status)
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


class Published:
    """A domain event publisher keeping what it is given."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def publish(self, event: Any) -> None:
        self.events.append(event)


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


def create_only_commit(seen: Seen) -> bool:
    """The commit of a create-only upload: its PutObject, or its CompleteMultipartUpload."""
    commit = (seen.method == "PUT" and "uploadId=" not in seen.path_qs) or \
        (seen.method == "POST" and "uploadId=" in seen.path_qs)
    return commit and seen.headers.get("if-none-match") == "*"


PATHS = pytest.mark.parametrize(
    ("direct", "size"), [(True, 1000), (False, 1000), (False, 5 * MiB + 1)],
    ids=["direct-put", "aioboto3-put", "multipart-complete"])
#: how the first answer is lost: the connection closed (aiohttp itself resends a PUT then,
#: botocore a POST), or a gateway's 504 (the driver's retry)
LOST = pytest.mark.parametrize("lost_as", [None, 504], ids=["closed", "504"])


# ---------------------------------------------------------------- create-only, answer lost


@PATHS
@LOST
async def test_create_only_upload_whose_answer_was_lost_reports_its_own_success(
        seaweedfs_server: S3Settings, weed_bucket: str, direct: bool, size: int,
        lost_as: int | None) -> None:
    """The first create-only attempt stores the object but its answer is lost; the retry gets
    412 because the object now exists. That object is the caller's own: the upload succeeds,
    once (one event), with its own info."""
    raw = os.urandom(size)
    published = Published()
    async with S3Proxy(seaweedfs_server.endpoint_url) as proxy, \
            proxied_driver(seaweedfs_server, proxy.endpoint, weed_bucket, direct,
                           events=StorageEvents(publisher=published)) as store:
        proxy.drop(create_only_commit, lost_as)
        info = await store.upload("lock/a", raw, metadata={"owner": "me"}, if_none_match="*")
        await store.flush_events(5)
        commits = [s for s in proxy.seen if create_only_commit(s)]
        assert len(commits) == 2  # the lost one and its retry
        assert (info.size, info.etag, info.metadata) == (len(raw), sha256(raw), {"owner": "me"})
        assert [e.etag for e in published.events if isinstance(e, FileUploadedEvent)] == \
            [sha256(raw)]
        stored = await store.info("lock/a")
        assert (stored.etag, stored.metadata) == (sha256(raw), {"owner": "me"})
        assert await store.download("lock/a") == raw


@PATHS
@LOST
async def test_create_only_upload_losing_to_another_writer_still_fails(
        seaweedfs_server: S3Settings, weed_bucket: str, direct: bool, size: int,
        lost_as: int | None) -> None:
    """Another writer's object exists; the first attempt's 412 is lost and the retry's 412
    stands: the object is not the caller's, so the upload fails and changes nothing."""
    async with s3_client_for(seaweedfs_server) as client:
        await client.put_object(Bucket=weed_bucket, Key="lock/b", Body=b"theirs")
    async with S3Proxy(seaweedfs_server.endpoint_url) as proxy, \
            proxied_driver(seaweedfs_server, proxy.endpoint, weed_bucket, direct) as store:
        proxy.drop(create_only_commit, lost_as)
        with pytest.raises(PreconditionFailedError):
            await store.upload("lock/b", os.urandom(size), if_none_match="*")
        assert len([s for s in proxy.seen if create_only_commit(s)]) == 2
        assert await store.download("lock/b") == b"theirs"


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


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "aioboto3"])
async def test_redirects_are_never_followed(unique_name: str, direct: bool) -> None:
    """A 307 answer is an error like any other, as botocore raises it (``TemporaryRedirect``):
    the body is never sent to the host named in ``Location``, without its signature, on either
    request path."""
    elsewhere: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        body = b"" if request.method == "HEAD" else (
            b"<Error><Code>TemporaryRedirect</Code><Message>Please re-send this request to "
            b"the specified temporary endpoint</Message></Error>")
        # as S3 answers: with the bucket's region (botocore's region redirector reads it)
        return web.Response(status=307, body=body,
                            headers={"Location": target + request.path_qs,
                                     "x-amz-bucket-region": "us-east-1"})

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
                            max_attempts=2, direct_requests=direct) as store:
            with pytest.raises(StorageRequestRejectedError) as rejected:
                await store.upload("r/a.txt", b"x")
            details = rejected.value.details
            assert (details["status"], details["error_code"]) == (307, "TemporaryRedirect")
            with pytest.raises(StorageRequestRejectedError):
                await store.download("r/a.txt")
            with pytest.raises(StorageRequestRejectedError):
                await store.info("r/a.txt")
            with pytest.raises(StorageRequestRejectedError):
                await store.upload("r/big.bin", os.urandom(9 * 1024 * 1024))  # multipart
            assert (store._direct is not None) is direct
        assert elsewhere == []
    finally:
        for runner in runners:
            await runner.cleanup()
