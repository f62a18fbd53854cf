"""The shared request-body deadline (drivers/_http.py) over plain aiohttp, with and without TLS:
a server that stops reading fails the request with a timeout, nothing hangs, and bodies arrive
intact with their Content-Length."""

from __future__ import annotations

import array
import asyncio
import datetime
import hashlib
import io
import ipaddress
import os
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lexigram_storage.drivers._http import SMALL_BODY, IdleBoundedPayload, idle_bounded_body, retry_delay
from tests.emulators import HOST

MiB = 1024 * 1024
SAFETY_NET = 30.0


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context trusting it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder: Path = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def contexts(scheme: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
             ) -> tuple[ssl.SSLContext | None, ssl.SSLContext | bool]:
    return (tls[0], tls[1]) if scheme == "https" else (None, False)


# ---------------------------------------------------------------- which bodies are wrapped


def test_in_memory_bodies_above_64_kib_are_wrapped_without_copying() -> None:
    raw = os.urandom(2 * SMALL_BODY)
    for body in (raw, bytearray(raw), memoryview(raw)):
        payload = idle_bounded_body(body, 5)
        assert isinstance(payload, IdleBoundedPayload)
        assert payload.size == len(raw)
    ints = array.array("i", range(SMALL_BODY))  # a memoryview of another format counts bytes
    wrapped = idle_bounded_body(memoryview(ints), 5)
    assert isinstance(wrapped, IdleBoundedPayload)
    assert wrapped.size == len(ints) * ints.itemsize
    buffer = io.BytesIO(raw)
    buffer.seek(10)
    from_position = idle_bounded_body(buffer, 5)
    assert isinstance(from_position, IdleBoundedPayload)
    assert from_position.size == len(raw) - 10
    assert buffer.tell() == 10
    buffer.write(b"still resizable")  # the BytesIO is not locked by an exported buffer


def test_small_and_other_bodies_are_left_alone() -> None:
    small = os.urandom(SMALL_BODY)
    assert idle_bounded_body(small, 5) is small
    big = io.BytesIO(os.urandom(2 * SMALL_BODY))
    big.seek(SMALL_BODY)
    assert idle_bounded_body(big, 5) is big  # from its position: a small body left
    stream = io.BufferedReader(io.BytesIO(b"x" * 2 * SMALL_BODY))
    assert idle_bounded_body(stream, 5) is stream
    assert idle_bounded_body(None, 5) is None
    text = "text" * SMALL_BODY
    assert idle_bounded_body(text, 5) is text


# ---------------------------------------------------------------- a server that reads


@pytest.fixture
async def echo(scheme: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
               ) -> AsyncIterator[tuple[str, ssl.SSLContext | bool]]:
    """A web server answering the SHA-256, length and framing of each request body."""
    async def digest(request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response({
            "sha256": hashlib.sha256(data).hexdigest(), "length": len(data),
            "content_length": request.headers.get("Content-Length"),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")})

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_put("/", digest)
    runner = web.AppRunner(app)
    await runner.setup()
    server_context, client_context = contexts(scheme, tls)
    site = web.TCPSite(runner, HOST, 0, ssl_context=server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{scheme}://{HOST}:{port}/", client_context
    finally:
        await runner.cleanup()


def bodies(raw: bytes) -> Iterator[tuple[str, Any, bytes]]:
    yield "bytes", raw, raw
    yield "bytearray", bytearray(raw), raw
    yield "memoryview", memoryview(raw), raw
    buffer = io.BytesIO()
    buffer.write(b"skipped" + raw)
    buffer.seek(len(b"skipped"))
    yield "BytesIO from its position", buffer, raw


async def test_bodies_arrive_whole_with_their_content_length(
        echo: tuple[str, ssl.SSLContext | bool]) -> None:
    url, client_context = echo
    raw = os.urandom(5 * MiB + 123)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=10)) as session:
        for label, body, expected in bodies(raw):
            payload = idle_bounded_body(body, 10)
            assert isinstance(payload, IdleBoundedPayload), label
            async with session.put(url, data=payload, ssl=client_context) as response:
                answer = await response.json()
            assert answer == {"sha256": hashlib.sha256(expected).hexdigest(),
                              "length": len(expected), "content_length": str(len(expected)),
                              "chunked": False}, label


# ---------------------------------------------------------------- a server that stops reading


@pytest.fixture
async def deaf(scheme: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
               ) -> AsyncIterator[tuple[str, ssl.SSLContext | bool, list[asyncio.StreamReader]]]:
    """A server that accepts connections (and the TLS handshake) but reads no request; the
    test may read what arrived afterwards."""
    readers: list[asyncio.StreamReader] = []
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        readers.append(reader)
        writers.append(writer)

    server_context, client_context = contexts(scheme, tls)
    server = await asyncio.start_server(accept, HOST, 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{scheme}://{HOST}:{port}/", client_context, readers
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_a_server_that_stops_reading_fails_the_request(
        deaf: tuple[str, ssl.SSLContext | bool, list[asyncio.StreamReader]]) -> None:
    url, client_context, readers = deaf
    raw = os.urandom(16 * MiB)  # far more than the socket buffers take
    timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=1)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        request = asyncio.ensure_future(
            session.put(url, data=idle_bounded_body(raw, 1), ssl=client_context))
        done, _ = await asyncio.wait({request}, timeout=SAFETY_NET)
        assert done, "the request hung"
        with pytest.raises(aiohttp.ServerTimeoutError, match="writing the request body"):
            request.result()
    # the connection was dropped with the rest of the body unsent: never a whole request
    (reader,) = readers
    received = 0
    try:
        while chunk := await reader.read(MiB):
            received += len(chunk)
    except ConnectionError:
        pass
    assert received < len(raw)


def test_retry_delay_is_botocores_standard_rule() -> None:
    """Every self-retrying driver waits a random time in [0, min(20, 2**(n-1))] after its n-th
    failure, like botocore's standard mode that the S3 driver uses."""
    random.seed(7)
    for failures, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 20.0), (60, 20.0)]:
        waits = [retry_delay(failures) for _ in range(400)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap * 0.9 and min(waits) < cap * 0.1  # spread over the whole range
