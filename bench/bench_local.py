"""Local driver benchmark: ours vs the existing package (lexigram-storage 0.1.5009) vs obstore.

Run: .venv/bin/python bench/bench_local.py [--only up_seq,down_seq] [--repeat 3]

Every workload of every implementation runs in a fresh subprocess (so peak RSS is its own);
the existing package and obstore run in bench/.venv-ref, created on first use. Prints a
markdown table: workload | ours | existing | ratio (ours/existing) | obstore | peak RSS.

Same work on every side: each upload writes a real file under the root (ours: an O_TMPFILE in
``.lexigram/staging`` plus the ``user.lexigram`` xattr, linked into place; existing: a
``mkstemp`` file in the target directory renamed into place; obstore: a temp file renamed into
place), each download opens and reads the file. Logging is configured at WARNING in every worker
(the existing package otherwise renders a debug and an info line per upload, which would slow it
down for reasons unrelated to storage).

Noise: on ext4 without a journal, creating a file scans past every inode of its block group
freed recently, so any program deleting many files nearby makes every upload (ours and theirs
alike) slower by up to ~1 ms, which squeezes the upload ratios. The stores live in ``--dir``
(default /var/tmp, disk-backed), nothing is deleted until the end, and a run starting within
SETTLE_SECONDS of the previous one's cleanup waits first (65 s was not enough here: two full
runs started 56-63 s after a cleanup measured our first workload, 4 KiB uploads, at ~1,600
ops/s, against ~2,560 ops/s after 3 minutes). ``--repeat N`` alternates the
implementations N times and shows each same-run ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
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
SETTLE_SECONDS = 180  # after the previous run's cleanup, before timing anything
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


def quiet_logging() -> None:
    """The same log level on every side (structlog defaults to printing debug lines)."""
    try:
        from lexigram.logging import configure_logging
    except ImportError:  # obstore-only environment
        return
    configure_logging(level="WARNING")


async def run_worker(kind: str, workload: str, work: Path, source: Path) -> dict[str, Any]:
    quiet_logging()
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
    # The work directory is removed only at the end of the whole benchmark: deleting thousands of
    # files between two timed workers slows down the next one's file creations (ext4 without a
    # journal skips inodes freed in the last 30-60 s, one check each), which would penalise
    # whichever implementation runs next. Only the big single-inode file goes now.
    work = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-{workload}-", dir=source.parent))
    try:
        proc = subprocess.run(
            [str(python), __file__, "--worker", kind, workload, str(work), str(source)],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        (work / "root" / "big.bin").unlink(missing_ok=True)
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


def main(only: set[str] | None, repeat: int, where: str) -> None:
    ours_py = Path(sys.executable)
    ref_py = ref_python()
    # the deletions of a previous run's cleanup slow down file creation for a minute (see run())
    marker = Path(where) / ".lexigram-bench-cleaned"
    with contextlib.suppress(OSError, ValueError):
        wait = float(marker.read_text()) + SETTLE_SECONDS - time.time()
        if wait > 0:
            print(f"  waiting {wait:.0f} s: the previous run's files were deleted just now",
                  file=sys.stderr)
            time.sleep(wait)
    scratch = Path(tempfile.mkdtemp(prefix="lexigram-bench-", dir=where))
    source = scratch / "source-256MiB.bin"
    rows = []
    try:
        for workload, label, unit, impls, with_rss in WORKLOADS:
            if only is not None and workload not in only:
                continue
            if workload in ("stream", "up_file") and not source.exists():
                # written only now: writing 256 MiB just before the 4 KiB workloads slowed the
                # file creations of whichever implementation ran first (always ours)
                _write_source(source)
            # implementations alternate, so a slow spell of the machine hits each of them
            runs: dict[str, list[dict[str, Any] | None]] = {kind: [] for kind in impls}
            for _ in range(repeat):
                for kind in impls:
                    python = ours_py if kind == "ours" else ref_py
                    runs[kind].append(run(python, kind, workload, source))
            print(f"  done: {label}", file=sys.stderr)
            res = {kind: _median([r for r in results if r]) for kind, results in runs.items()}
            pairs = [o["value"] / t["value"] for o, t in
                     zip(runs["ours"], runs.get("existing", []), strict=False) if o and t]
            ratio = f"{statistics.median(pairs):.1f}x" if pairs else "-"
            if len(pairs) > 1:
                ratio += " (" + ", ".join(f"{x:.1f}" for x in pairs) + ")"
            ours, theirs, obst = res.get("ours"), res.get("existing"), res.get("obstore")
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
        marker.write_text(str(time.time()))
    print("| workload | ours | existing (0.1.5009) | ratio | obstore LocalStore | peak RSS above idle |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    runs_note = f"; {repeat} alternating runs per implementation (medians; ratio: median of " \
        "the per-run ratios, each listed)" if repeat > 1 else ""
    print(f"\n256 MiB = {BIG // MiB} MiB object; {os.cpu_count()} CPUs; Python "
          f"{sys.version.split()[0]}; medians of {ROUNDS} rounds for the 4 KiB workloads"
          f"{runs_note}.")


def _write_source(source: Path) -> None:
    block = os.urandom(MiB)
    with source.open("wb") as f:
        for _ in range(BIG // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())  # else its writeback runs during (and slows) the next worker


def _median(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run with the median value (peak RSS: the largest of all runs)."""
    if not results:
        return None
    ordered = sorted(results, key=lambda r: r["value"])
    mid = dict(ordered[len(ordered) // 2])
    if "rss" in mid:
        mid["rss"] = max(r["rss"] for r in results)
    return mid


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, workload, work, source = sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
        print(json.dumps(asyncio.run(run_worker(kind, workload, work, source))))
    else:
        import argparse
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("--only", help="comma-separated workload ids, e.g. up_seq,down_seq")
        parser.add_argument("--repeat", type=int, default=1,
                            help="alternating runs per implementation (default 1)")
        parser.add_argument("--dir", default="/var/tmp",
                            help="where the stores live (default /var/tmp: disk-backed, unlike "
                                 "a tmpfs /tmp, and away from other programs' temp files)")
        args = parser.parse_args()
        main(set(args.only.split(",")) if args.only else None, max(1, args.repeat), args.dir)
