"""Local driver benchmark: ours vs the existing package (lexigram-storage 0.1.5009) vs obstore.

Run: .venv/bin/python bench/bench_local.py

Every workload of every implementation runs in a fresh subprocess (so peak RSS is its own);
the existing package and obstore run in bench/.venv-ref, created on first use. Prints a
markdown table: workload | ours | existing | ratio (ours/existing) | obstore | peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, PeakRSS, ref_python

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")

N, SMALL, CONCURRENCY, ROUNDS = 2000, 4096, 64, 3
BIG = 256 * MiB
ITER_CHUNK = 64 * 1024
STREAM_CHUNK = 8192

# (workload id, label, unit, implementations, rss?)
WORKLOADS: list[tuple[str, str, str, tuple[str, ...], bool]] = [
    ("up_seq", f"{N} x 4 KiB uploads, sequential", "ops/s", ("ours", "existing", "obstore"), False),
    ("down_seq", f"{N} x 4 KiB downloads, sequential", "ops/s", ("ours", "existing", "obstore"), False),
    ("up_c64", f"{N} x 4 KiB uploads, concurrency {CONCURRENCY}", "ops/s",
     ("ours", "existing", "obstore"), False),
    ("down_c64", f"{N} x 4 KiB downloads, concurrency {CONCURRENCY}", "ops/s",
     ("ours", "existing", "obstore"), False),
    ("stream", "stream() 256 MiB, chunk_size=8192", "MiB/s", ("ours", "existing", "obstore"), True),
    ("up_iter", "upload 256 MiB from an async iterator (64 KiB chunks)", "MiB/s",
     ("ours", "existing", "obstore"), True),
    ("up_file", "upload 256 MiB from an open file", "MiB/s", ("ours", "existing", "obstore"), True),
    ("mem_iter", "memory driver: upload 256 MiB from an async iterator", "MiB/s",
     ("ours", "existing"), True),
]


# ---------------------------------------------------------------------------- adapters


class Impl:
    """The same few calls over each implementation."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        if kind == "ours":
            from lexigram_storage.drivers.local import LocalDriver
            self.d: Any = LocalDriver(root, name="bench")
        elif kind == "ours-memory":
            from lexigram_storage.drivers.memory import MemoryDriver
            self.d = MemoryDriver(name="bench")
        elif kind == "existing":
            from lexigram.storage.backends.local import LocalDriver as RefLocal
            root.mkdir(parents=True, exist_ok=True)
            self.d = RefLocal(root_dir=str(root))
        elif kind == "existing-memory":
            from lexigram.storage.backends.memory import MemoryDriver as RefMemory
            self.d = RefMemory()
        elif kind == "obstore":
            from obstore.store import LocalStore
            root.mkdir(parents=True, exist_ok=True)
            self.d = LocalStore(str(root))
        else:
            raise ValueError(kind)

    async def prepare(self) -> None:
        if hasattr(self.d, "prepare"):
            await self.d.prepare()

    async def upload(self, key: str, data: Any) -> None:
        if self.kind == "obstore":
            import obstore
            await obstore.put_async(self.d, key, data)
        else:
            await self.d.upload(key, data)

    async def download(self, key: str) -> bytes:
        if self.kind == "obstore":
            import obstore
            return bytes(await (await obstore.get_async(self.d, key)).bytes_async())
        data: bytes = await self.d.download(key)
        return data

    async def stream(self, key: str) -> int:
        total = 0
        if self.kind == "obstore":
            import obstore
            resp = await obstore.get_async(self.d, key)
            async for chunk in resp.stream(min_chunk_size=STREAM_CHUNK):
                total += len(chunk)
            return total
        async for chunk in self.d.stream(key, STREAM_CHUNK):
            total += len(chunk)
        return total


async def chunks_of(block: bytes, total: int) -> AsyncIterator[bytes]:
    for _ in range(total // len(block)):
        yield block


async def gather_limited(n: int, limit: int, fn: Any) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def run_worker(kind: str, workload: str, work: Path, source: Path) -> dict[str, Any]:
    memory = workload == "mem_iter"
    impl = Impl(f"{kind}-memory" if memory else kind, work / "root")
    await impl.prepare()
    data = os.urandom(SMALL)
    if workload in ("up_seq", "down_seq", "up_c64", "down_c64"):
        rates = []
        for r in range(ROUNDS):
            keys = [f"r{r}/d{i % 20}/obj-{i:05d}.bin" for i in range(N)]
            if workload.startswith("up"):
                start = time.perf_counter()
                if workload == "up_seq":
                    for key in keys:
                        await impl.upload(key, data)
                else:
                    await gather_limited(N, CONCURRENCY, lambda i, k=keys: impl.upload(k[i], data))
            else:
                for key in keys:
                    await impl.upload(key, data)
                start = time.perf_counter()
                if workload == "down_seq":
                    for key in keys:
                        await impl.download(key)
                else:
                    await gather_limited(N, CONCURRENCY, lambda i, k=keys: impl.download(k[i]))
            rates.append(N / (time.perf_counter() - start))
        return {"value": statistics.median(rates)}
    if workload == "stream":
        target = work / "root" / "big.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)  # a plain file: every implementation can read it
        with PeakRSS() as rss:
            start = time.perf_counter()
            total = await impl.stream("big.bin")
            elapsed = time.perf_counter() - start
        assert total == BIG, total
        return {"value": BIG / MiB / elapsed, "rss": rss.above}
    block = os.urandom(ITER_CHUNK)
    if workload in ("up_iter", "mem_iter"):
        with PeakRSS() as rss:
            start = time.perf_counter()
            await impl.upload("big.bin", chunks_of(block, BIG))
            elapsed = time.perf_counter() - start
    else:
        with source.open("rb") as f, PeakRSS() as rss:
            start = time.perf_counter()
            await impl.upload("big.bin", f)
            elapsed = time.perf_counter() - start
    return {"value": BIG / MiB / elapsed, "rss": rss.above}


# ---------------------------------------------------------------------------- driver


def run(python: Path, kind: str, workload: str, source: Path) -> dict[str, Any] | None:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=source.parent))
    try:
        proc = subprocess.run(
            [str(python), __file__, "--worker", kind, workload, str(work), str(source)],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {kind} {workload}: failed ({tail[:160]})", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "failed"
    return f"{value:,.0f} {unit}"


def main() -> None:
    ours_py = Path(sys.executable)
    ref_py = ref_python()
    scratch = Path(tempfile.mkdtemp(prefix="lexigram-bench-"))
    source = scratch / "source-256MiB.bin"
    block = os.urandom(MiB)
    with source.open("wb") as f:
        for _ in range(BIG // MiB):
            f.write(block)
    rows = []
    try:
        for workload, label, unit, impls, with_rss in WORKLOADS:
            res = {kind: run(ours_py if kind == "ours" else ref_py, kind, workload, source)
                   for kind in impls}
            print(f"  done: {label}", file=sys.stderr)
            ours = res.get("ours")
            theirs = res.get("existing")
            obst = res.get("obstore")
            ratio = (f"{ours['value'] / theirs['value']:.1f}x" if ours and theirs else "-")
            rss = "-"
            if with_rss:
                parts = [f"{name} {r['rss'] / MiB:.0f} MiB" for name, r in
                         (("ours", ours), ("existing", theirs), ("obstore", obst)) if r]
                rss = ", ".join(parts)
            rows.append((label, fmt(ours and ours["value"], unit),
                         fmt(theirs and theirs["value"], unit), ratio,
                         fmt(obst["value"], unit) if obst else "-", rss))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("| workload | ours | existing (0.1.5009) | ratio | obstore LocalStore | peak RSS above idle |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n256 MiB = {BIG // MiB} MiB object; {os.cpu_count()} CPUs; Python "
          f"{sys.version.split()[0]}; medians of {ROUNDS} rounds for the 4 KiB workloads.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, workload, work, source = sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
        print(json.dumps(asyncio.run(run_worker(kind, workload, work, source))))
    else:
        main()
