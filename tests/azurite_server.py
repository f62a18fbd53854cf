"""Azurite, the Azure Blob Storage emulator, started on 127.0.0.1 for the tests.

Azurite 3.37.0 is a Node package of this project (``package.json`` + ``package-lock.json``;
``.ci/run`` installs it with ``npm ci --no-audit --no-fund``), so the server is
``<repo>/node_modules/.bin/azurite-blob``. Without it every Azure test is skipped with the reason
and the command that installs it. Each server keeps its blobs in memory, listens on a free port
and is stopped (or paused) by its own PID only. Azurite checks shared-key signatures and SAS
tokens (signature, expiry, permissions), conditional headers and batch requests.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import HOST, Emulator

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"
INSTALL = f"cd {ROOT} && npm ci --no-audit --no-fund"
ACCOUNT = "devstoreaccount1"
#: Azurite's well-known development account key (public, documented by Microsoft)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite(Emulator):
    """One ``azurite-blob`` process (blob service only, in memory)."""

    def __init__(self) -> None:
        super().__init__("azurite")

    def _cmd(self) -> tuple[list[str], str]:
        # --skipApiVersionCheck: the SDK sends a newer x-ms-version than Azurite 3.37.0 knows
        return ([str(AZURITE_BLOB), "--blobHost", HOST, "--blobPort", str(self.port),
                 "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--silent",
                 "--disableTelemetry"],
                f"{self.endpoint}/{ACCOUNT}?comp=list")  # answers 403 once it is up


class AzuriteEntra(Azurite):
    """Azurite over HTTPS with Entra ID checks (``--oauth basic``: bearer tokens must name the
    storage audience and an Entra issuer and be in their validity window; their signature is not
    checked), for the token-credential and user-delegation SAS paths. *cert* and *key* are a
    self-signed certificate for 127.0.0.1."""

    def __init__(self, cert: Path, key: str | Path) -> None:
        self.cert, self.key = cert, Path(key)
        self.probe_context = ssl.create_default_context(cafile=str(cert))
        super().__init__()

    @property
    def endpoint(self) -> str:
        return f"https://{HOST}:{self.port}"

    def _cmd(self) -> tuple[list[str], str]:
        cmd, probe = super()._cmd()
        return ([*cmd, "--oauth", "basic", "--cert", str(self.cert), "--key", str(self.key)],
                probe)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 made by ``openssl`` (the test is skipped without)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a certificate for Azurite over HTTPS")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", f"/CN={HOST}",
                    "-addext", f"subjectAltName=IP:{HOST}"], check=True, capture_output=True)
    return cert, key


@dataclass
class AzuriteSettings:
    account_url: str
    account_name: str = ACCOUNT
    account_key: str = KEY
    emulator: Azurite | None = field(default=None, repr=False)

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
                f"AccountKey={self.account_key};BlobEndpoint={self.account_url};")


def start_azurite(entra_certificate: tuple[Path, Path] | None = None) -> AzuriteSettings:
    """A new server; with *entra_certificate* (cert, key) one over HTTPS checking Entra ID."""
    if not AZURITE_BLOB.exists():
        pytest.skip(f"Azurite is not installed ({AZURITE_BLOB} is missing); install it with: "
                    f"{INSTALL}")
    emu = Azurite() if entra_certificate is None else AzuriteEntra(*entra_certificate)
    return AzuriteSettings(account_url=f"{emu.endpoint}/{ACCOUNT}", emulator=emu)


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteSettings]:
    """An Azurite server shared by the session (use a fresh container per test)."""
    settings = start_azurite()
    try:
        yield settings
    finally:
        assert settings.emulator is not None
        settings.emulator.close()


@pytest.fixture(scope="module")
def azurite_entra(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[AzuriteSettings, Path]]:
    """Azurite over HTTPS checking Entra ID bearer tokens, and its certificate."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("azurite-tls"))
    settings = start_azurite((cert, key))
    try:
        yield settings, cert
    finally:
        assert settings.emulator is not None
        settings.emulator.close()


@pytest.fixture
def azurite_factory() -> Iterator[Callable[[], AzuriteSettings]]:
    """Private servers for fault injection (stop or pause them freely)."""
    started: list[AzuriteSettings] = []

    def make() -> AzuriteSettings:
        settings = start_azurite()
        started.append(settings)
        return settings

    yield make
    for settings in started:
        assert settings.emulator is not None
        settings.emulator.close()


def azure_service_for(s: AzuriteSettings, **options: Any) -> Any:
    """A raw async ``BlobServiceClient`` (for set-up and for checking server state): no
    retries, short timeouts. Use it with ``async with``."""
    from azure.storage.blob.aio import BlobServiceClient

    settings: dict[str, Any] = {"retry_total": 0, "connection_timeout": 2, "read_timeout": 20}
    settings.update(options)
    return BlobServiceClient.from_connection_string(s.connection_string, **settings)


async def create_container(s: AzuriteSettings, name: str | None = None) -> str:
    name = name or f"t-{uuid.uuid4().hex[:20]}"
    async with azure_service_for(s) as service:
        await service.create_container(name)
    return name


@pytest.fixture
async def azure_service(azurite: AzuriteSettings) -> AsyncIterator[Any]:
    async with azure_service_for(azurite) as service:
        yield service


@pytest.fixture
async def azure_container(azure_service: Any, unique_name: str) -> str:
    await azure_service.create_container(unique_name)
    return unique_name
