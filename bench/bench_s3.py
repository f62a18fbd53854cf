"""S3 driver benchmark: ours vs raw aioboto3 calls on the same moto server.

Run: .venv/bin/python bench/bench_s3.py [--small N] [--rounds R] [--big-rounds B] [--big-mib M]

Starts its own moto server on 127.0.0.1 (a free port). Workloads, each alternating which side
goes first, median of the rounds:
  * N x 4 KiB PutObject, sequential: ``S3Driver.upload`` vs ``client.put_object``
  * N x 4 KiB GetObject, sequential: ``S3Driver.download`` vs ``get_object`` + ``Body.read()``
  * a 256 MiB upload from an open file: ``S3Driver.upload`` (multipart) vs aioboto3's managed
    ``upload_fileobj``, with the peak RSS above the idle process and the CPU time of this
    process (the client) and of the moto server.
Prints a markdown table: workload | ours | raw aioboto3 | ratio (ours/raw time) | peak RSS |
client CPU | server CPU.

Both sides use the same settings: botocore client config (SigV4, path addressing, standard
retries, 40 pooled connections, request checksums ``when_supported`` = a CRC32 header on every
part, payload signing at botocore's default = signed, since the endpoint is plain HTTP, no
``Expect: 100-continue``), 8 MiB
parts above an 8 MiB threshold, 10 parts in flight (``TransferConfig`` is passed explicitly to
``upload_fileobj``). What differs is the work itself: ours also computes the object's SHA-256
(``FileInfo.etag``) before CreateMultipartUpload (stored in its metadata) and again while the
parts are read (so a file that changes mid-upload is recorded correctly), and keeps at most
10 parts in memory; ``upload_fileobj`` computes no content digest and queues up to 100 parts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, Workload, alternate, print_table, run_driver_bench

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import aioboto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.handlers import add_expect_header

from lexigram_storage.drivers.s3 import S3Driver

KEY, SECRET, REGION = "bench", "bench-secret", "us-east-1"
PART, CONCURRENCY = 8 * MiB, 10


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.05)


async def main(n: int, rounds: int, big_rounds: int, big_mib: int, big: Path) -> None:
    proc, endpoint = start_moto()
    small = os.urandom(4096)
    #: one driver per bucket (a driver's bucket is fixed), ready before it is timed
    drivers: dict[str, S3Driver] = {}
    try:
        def driver(bucket: str) -> S3Driver:
            return S3Driver(bucket, region=REGION, access_key=KEY, secret_key=SECRET,
                            endpoint_url=endpoint, addressing_style="path",
                            multipart_threshold=PART, multipart_chunk_size=PART,
                            max_concurrency=CONCURRENCY, name="bench")

        # the raw client gets exactly the botocore config the driver builds for itself
        cfg: Config = driver("placeholder")._boto_config()
        transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                                  max_concurrency=CONCURRENCY)
        session = aioboto3.Session()
        async with session.client("s3", endpoint_url=endpoint, region_name=REGION, config=cfg,
                                  aws_access_key_id=KEY, aws_secret_access_key=SECRET) as raw:
            # the driver drops botocore's "Expect: 100-continue" (a hung server would hang the
            # upload); the raw client does the same, so neither waits for a 100 Continue
            raw.meta.events.unregister("before-call.s3", add_expect_header)

            async def fresh_bucket() -> str:
                name = f"bench-{uuid.uuid4().hex[:16]}"
                await raw.create_bucket(Bucket=name)
                drivers[name] = driver(name)
                await drivers[name].exists("warm-up")  # the client and a pooled connection
                return name

            async def ours_put(bucket: str) -> None:
                for i in range(n):
                    await drivers[bucket].upload(f"small/{i:05d}.bin", small)

            async def raw_put(bucket: str) -> None:
                for i in range(n):
                    await raw.put_object(Bucket=bucket, Key=f"small/{i:05d}.bin", Body=small,
                                         ContentType="application/octet-stream")

            async def ours_get(bucket: str) -> None:
                for i in range(n):
                    await drivers[bucket].download(f"small/{i:05d}.bin")

            async def raw_get(bucket: str) -> None:
                for i in range(n):
                    response = await raw.get_object(Bucket=bucket, Key=f"small/{i:05d}.bin")
                    async with response["Body"] as body:
                        await body.read()

            async def ours_big(bucket: str) -> None:
                with big.open("rb") as f:
                    await drivers[bucket].upload("big.bin", f)

            async def raw_big(bucket: str) -> None:
                with big.open("rb") as f:
                    await raw.upload_fileobj(f, bucket, "big.bin", Config=transfer)

            # warm both clients (connections, service models)
            warm = await fresh_bucket()
            await ours_put(warm)
            await raw_put(warm)

            async def after(work: Workload, bucket: str) -> None:
                if work.big:
                    await raw.delete_object(Bucket=bucket, Key="big.bin")

            results, rss = await alternate([
                Workload(f"{n} x 4 KiB PutObject, sequential", ours_put, raw_put, rounds),
                Workload(f"{n} x 4 KiB GetObject, sequential", ours_get, raw_get, rounds,
                         seeded=True),
                Workload(f"{big_mib} MiB upload from a file (multipart vs upload_fileobj)",
                         ours_big, raw_big, big_rounds, big=True),
            ], proc.pid, fresh_bucket, raw_put, after)
    finally:
        for each in drivers.values():
            await each.close()
        proc.terminate()
        proc.wait(10)

    print(f"\nS3 driver vs raw aioboto3 on a local moto server ({os.cpu_count()} cores; median "
          f"of {rounds} rounds, big upload median of {big_rounds}; same client config, "
          f"{PART // MiB} MiB parts, {CONCURRENCY} in flight).\n")
    print_table(results, rss, "raw aioboto3", n, big_mib)


if __name__ == "__main__":
    run_driver_bench(main, __doc__ or "", big_rounds=5)
