"""Fixtures that start real emulator servers on 127.0.0.1 (moto for S3/R2).

Servers bind to free ports on 127.0.0.1 and run as subprocesses, so tests can stop, pause
(SIGSTOP) and resume them. Only the PIDs started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import aiohttp
import pytest
from aiohttp import web

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class HttpProxy:
    """An HTTP server on 127.0.0.1 in front of *upstream* for fault injection: subclasses
    forward each request in ``_handle`` (with ``_session``) and alter what they must.
    ``start()``/``close()``, or ``async with``; ``endpoint`` is its URL once started."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.endpoint = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, HOST, port).start()
        self.endpoint = f"http://{HOST}:{port}"
        return self.endpoint

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def stop_process(pid: int) -> None:
    """SIGSTOP *pid* and return once every thread of it is stopped: ``kill`` returns before
    the signal has reached them all, and a request sent meanwhile could still be answered.
    Where ``/proc`` is missing (macOS), a short wait stands in for the check."""
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        time.sleep(0.1)
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread that just ended
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not stop within 5 s")

class Emulator:
    """One emulator subprocess. Fault injection: stop(), pause()/resume(), restart()."""

    #: how the readiness probe verifies an HTTPS server (its test CA); None: the default
    probe_context: ssl.SSLContext | None = None

    def __init__(self, kind: str, port: int | None = None, env: dict[str, str] | None = None):
        self.kind = kind
        self.port = port or free_port()
        self.workdir = tempfile.mkdtemp(prefix=f"emu-{kind}-")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _cmd(self) -> tuple[list[str], str]:
        if self.kind == "s3":
            return ([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                    f"{self.endpoint}/moto-api/")
        raise ValueError(self.kind)

    def start(self, timeout: float = 30.0) -> None:
        cmd, probe = self._cmd()
        with open(os.path.join(self.workdir, "server.log"), "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited rc={self.proc.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(probe, timeout=1, context=self.probe_context).close()
                return
            except urllib.error.HTTPError:  # any HTTP status means it is listening
                return
            except OSError:
                if time.monotonic() - t0 > timeout:
                    self.stop()
                    raise TimeoutError(f"{self.kind} not ready after {timeout}s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s). Safe to call twice."""
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pause(self) -> None:
        """The server hangs: connections are accepted by the kernel, nothing answers."""
        if self.proc and self.proc.poll() is None:
            stop_process(self.proc.pid)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.workdir, "server.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Server(Protocol):
    """What fault injection uses of a server: moto's ``Emulator`` and the real servers of
    tests/servers.py alike."""

    def stop(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def log_tail(self, n: int = 2000) -> str: ...


@dataclass
class S3Settings:
    endpoint_url: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    emulator: Server | None = field(default=None, repr=False)


@pytest.fixture(scope="session", autouse=True)
def _no_real_cloud_credentials() -> Iterator[None]:
    """No test can ever reach real AWS credentials, profiles or IMDS."""
    mp = pytest.MonkeyPatch()
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE"):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Settings]:
    """A moto server shared by the session (use a fresh bucket per test)."""
    emu = Emulator("s3")
    try:
        yield S3Settings(endpoint_url=emu.endpoint, emulator=emu)
    finally:
        emu.close()


@pytest.fixture
def emulator_factory() -> Iterator[Callable[[str], S3Settings]]:
    """Private servers for fault injection (stop or pause them freely)."""
    started: list[Emulator] = []

    def make(kind: str = "s3") -> S3Settings:
        emu = Emulator(kind)
        started.append(emu)
        return S3Settings(endpoint_url=emu.endpoint, emulator=emu)

    yield make
    for emu in started:
        emu.close()


@pytest.fixture
def unique_name() -> str:
    """A valid S3 bucket / GCS bucket / Azure container name."""
    return f"t-{uuid.uuid4().hex[:20]}"


_SESSION: Any = None


def s3_client_for(s: S3Settings, region: str | None = None, **config: Any) -> Any:
    """A raw aioboto3 client context manager (for set-up and for checking server state)."""
    import aioboto3
    from botocore.config import Config

    cfg = Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                 retries={"total_max_attempts": 1, "mode": "standard"},
                 connect_timeout=2, read_timeout=10, **config)
    global _SESSION
    if _SESSION is None:
        _SESSION = aioboto3.Session()
    return _SESSION.client("s3", endpoint_url=s.endpoint_url, region_name=region or s.region,
                           config=cfg, aws_access_key_id=s.access_key,
                           aws_secret_access_key=s.secret_key)


async def create_bucket(s: S3Settings, name: str) -> None:
    async with s3_client_for(s) as client:
        await client.create_bucket(Bucket=name)


@pytest.fixture
async def s3_client(s3_server: S3Settings) -> AsyncIterator[Any]:
    async with s3_client_for(s3_server) as client:
        yield client


@pytest.fixture
async def s3_bucket(s3_client: Any, unique_name: str) -> str:
    await s3_client.create_bucket(Bucket=unique_name)
    return unique_name
