"""Azure driver benchmark: ours vs raw azure-storage-blob (aio) calls on the same Azurite server.

Run: .venv/bin/python bench/bench_azure.py [--small N] [--rounds R] [--big-rounds B] [--big-mib M]

Needs Azurite from the project's npm lockfile (``npm ci --no-audit --no-fund``); starts its own
server on 127.0.0.1 (a free port, blobs in memory). Workloads, each alternating which side goes
first, median of the rounds:
  * N x 4 KiB uploads, sequential: ``AzureDriver.upload`` vs ``BlobClient.upload_blob``
  * N x 4 KiB downloads, sequential: ``AzureDriver.download`` vs ``download_blob().readall()``
  * a 256 MiB upload from an open file, and from an async iterator of 64 KiB chunks:
    ``AzureDriver.upload`` (staged blocks) vs the SDK's ``upload_blob(data,
    max_concurrency=...)``, with the peak RSS above the idle process, the CPU time of this
    process (the client) and of the Azurite server.
Prints a markdown table: workload | ours | raw SDK | ratio (ours/raw time) | peak RSS |
client CPU | server CPU.

Both sides use one client configuration, the driver's own (``AzureDriver._new_client``: the
shared retry policy and timeouts, 8 MiB blocks above an 8 MiB threshold, 4 blocks in flight).
What differs is the work itself: ours computes the SHA-256 of the content (``FileInfo.etag``)
while the bytes pass and stores it in the blob's metadata with the commit; the SDK computes no
digest.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, Workload, alternate, print_table, run_driver_bench

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")

from azure.storage.blob import ContentSettings

from lexigram_storage.drivers.azure import AzureDriver

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BLOCK, CONCURRENCY, CHUNK = 8 * MiB, 4, 64 * 1024


def start_azurite() -> tuple[subprocess.Popen[bytes], str]:
    if not AZURITE_BLOB.exists():
        sys.exit(f"Azurite is missing ({AZURITE_BLOB}): run `npm ci --no-audit --no-fund` in {ROOT}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--silent",
                             "--disableTelemetry"], cwd=tempfile.gettempdir(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "?comp=list", timeout=1).close()
        except urllib.error.HTTPError:  # 403 to the anonymous probe: it is up
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("Azurite did not start") from None
            time.sleep(0.05)
        else:
            return proc, endpoint


async def chunks_of(path: Path) -> AsyncIterator[bytes]:
    """The file as an async iterator of 64 KiB chunks (read on the loop: both sides alike)."""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


async def main(n: int, rounds: int, big_rounds: int, big_mib: int, big: Path) -> None:
    proc, endpoint = start_azurite()
    small = os.urandom(4096)
    octets = ContentSettings(content_type="application/octet-stream")
    try:
        ours = AzureDriver(ACCOUNT, KEY, "placeholder", account_url=endpoint, block_size=BLOCK,
                           block_upload_threshold=BLOCK, max_concurrency=CONCURRENCY, name="bench")
        # the raw client gets exactly the configuration the driver builds for itself
        async with ours._new_client() as raw, ours:

            async def fresh_container() -> str:
                name = f"bench-{uuid.uuid4().hex[:16]}"
                await raw.create_container(name)
                return name

            def use(container: str) -> None:
                ours._container_name = container
                ours._container = ours._service.get_container_client(container)  # type: ignore[union-attr]

            async def ours_put(container: str) -> None:
                use(container)
                for i in range(n):
                    await ours.upload(f"small/{i:05d}.bin", small)

            async def raw_put(container: str) -> None:
                client = raw.get_container_client(container)
                for i in range(n):
                    await client.get_blob_client(f"small/{i:05d}.bin").upload_blob(
                        small, overwrite=True, content_settings=octets)

            async def ours_get(container: str) -> None:
                use(container)
                for i in range(n):
                    await ours.download(f"small/{i:05d}.bin")

            async def raw_get(container: str) -> None:
                client = raw.get_container_client(container)
                for i in range(n):
                    downloader = await client.get_blob_client(f"small/{i:05d}.bin").download_blob()
                    await downloader.readall()

            async def ours_file(container: str) -> None:
                use(container)
                with big.open("rb") as f:
                    await ours.upload("big.bin", f)

            async def raw_file(container: str) -> None:
                with big.open("rb") as f:
                    await raw.get_blob_client(container, "big.bin").upload_blob(
                        f, overwrite=True, max_concurrency=CONCURRENCY, content_settings=octets)

            async def ours_iter(container: str) -> None:
                use(container)
                await ours.upload("big.bin", chunks_of(big))

            async def raw_iter(container: str) -> None:
                await raw.get_blob_client(container, "big.bin").upload_blob(
                    chunks_of(big), overwrite=True, max_concurrency=CONCURRENCY,
                    content_settings=octets)

            # warm both clients (connections)
            await ours.prepare()
            warm = await fresh_container()
            await ours_put(warm)
            await raw_put(warm)

            async def after(work: Workload, container: str) -> None:
                if work.big:
                    props = await raw.get_blob_client(container, "big.bin").get_blob_properties()
                    assert props.size == big_mib * MiB, props.size
                await raw.delete_container(container)

            results, rss = await alternate([
                Workload(f"{n} x 4 KiB uploads, sequential", ours_put, raw_put, rounds),
                Workload(f"{n} x 4 KiB downloads, sequential", ours_get, raw_get, rounds,
                         seeded=True),
                Workload(f"{big_mib} MiB upload from a file", ours_file, raw_file, big_rounds,
                         big=True),
                Workload(f"{big_mib} MiB upload from an async iterator (64 KiB chunks)",
                         ours_iter, raw_iter, big_rounds, big=True),
            ], proc.pid, fresh_container, raw_put, after)
    finally:
        proc.terminate()
        proc.wait(10)

    limit = CONCURRENCY * BLOCK + 32 * MiB
    print(f"\nAzure driver vs raw azure-storage-blob (aio) on a local Azurite 3.37.0 "
          f"({os.cpu_count()} cores; median of {rounds} rounds, big uploads median of "
          f"{big_rounds}; same client configuration, {BLOCK // MiB} MiB blocks, "
          f"{CONCURRENCY} in flight; peak RSS target {limit // MiB} MiB).\n")
    print_table(results, rss, "raw SDK", n, big_mib)


if __name__ == "__main__":
    run_driver_bench(main, __doc__ or "", big_rounds=3)
