"""Helpers shared by the benchmarks: the reference virtualenv, peak-RSS measurement, and the
timing and table of the driver-vs-raw-SDK benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REF_VENV = HERE / ".venv-ref"
REF_PACKAGES = ("lexigram-storage==0.1.5009", "obstore")
MiB = 1024 * 1024


def ref_python() -> Path:
    """The Python of ``bench/.venv-ref`` (the existing package and obstore), created if needed."""
    python = REF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(REF_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import lexigram.storage, obstore"],
                           capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REF_PACKAGES], check=True)
    return python


def _status(field: str) -> int:
    """A ``/proc/self/status`` value in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak resident memory above the idle process while the block runs (Linux).

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) on entry and
    reads ``VmHWM`` on exit.
    """

    def __enter__(self) -> PeakRSS:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.idle = _status("VmRSS")
        self.above = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.above = _status("VmHWM") - self.idle


# ------------------------------------------------ driver vs raw SDK against one server process
# (bench_s3.py, bench_gcs.py, bench_azure.py)

#: per workload and side ("ours", "raw"): (wall, client CPU, server CPU) seconds of each round
Timings = dict[str, dict[str, list[tuple[float, float, float]]]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(fn: Callable[[], Awaitable[Any]], server_pid: int) -> tuple[float, float, float]:
    """Wall seconds, client CPU seconds (this process) and server CPU seconds of one call."""
    s0, c0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    await fn()
    wall = time.perf_counter() - t0
    return wall, time.process_time() - c0, cpu_seconds(server_pid) - s0


@dataclass
class Workload:
    """One driver-vs-raw workload: *ours* and *raw* each run on a fresh bucket (or container)."""

    label: str
    ours: Callable[[str], Awaitable[None]]
    raw: Callable[[str], Awaitable[None]]
    rounds: int
    big: bool = False  # a big upload: peak RSS measured, and labelled "... MiB upload ..."
    seeded: bool = False  # the bucket gets the small objects first (the downloads)


async def alternate(workloads: list[Workload], server_pid: int,
                    fresh: Callable[[], Awaitable[str]],
                    seed: Callable[[str], Awaitable[None]],
                    after: Callable[[Workload, str], Awaitable[None]] | None = None,
                    ) -> tuple[Timings, dict[str, dict[str, int]]]:
    """Run every workload's rounds, ours and raw taking turns at going first (so a slow spell
    of the machine hits both), each call on a bucket from *fresh* (seeded by *seed* for a
    ``seeded`` workload, and handed to *after* once timed). The timings per workload and side,
    and the peak RSS of the big ones."""
    results: Timings = {}
    rss: dict[str, dict[str, int]] = {}
    for work in workloads:
        times: dict[str, list[tuple[float, float, float]]] = {"ours": [], "raw": []}
        peaks = {"ours": 0, "raw": 0}
        for r in range(work.rounds):
            order = [("ours", work.ours), ("raw", work.raw)]
            if r % 2:
                order.reverse()
            for who, fn in order:
                bucket = await fresh()
                if work.seeded:
                    await seed(bucket)
                with PeakRSS() as peak:
                    times[who].append(await timed(functools.partial(fn, bucket), server_pid))
                peaks[who] = max(peaks[who], peak.above)
                if after is not None:
                    await after(work, bucket)
        results[work.label] = times
        rss[work.label] = peaks if work.big else {}
        print(f"  done: {work.label}", file=sys.stderr)
    return results, rss


def run_driver_bench(main: Callable[[int, int, int, int, Path], Coroutine[Any, Any, None]],
                     doc: str, big_rounds: int) -> None:
    """The command line of a driver-vs-raw benchmark: parse the options, make the big file,
    run ``main(small, rounds, big_rounds, big_mib, big_file)``, remove the file."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--small", type=int, default=500, help="number of 4 KiB objects")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-rounds", type=int, default=big_rounds,
                        help="rounds of the big uploads (the machine may be noisy)")
    parser.add_argument("--big-mib", type=int, default=256)
    args = parser.parse_args()
    big_file = make_big_file(args.big_mib)
    try:
        asyncio.run(main(args.small, args.rounds, args.big_rounds, args.big_mib, big_file))
    finally:
        remove(big_file)


def make_big_file(big_mib: int) -> Path:
    """A file of *big_mib* random MiB in a temporary directory (``remove`` deletes both)."""
    big = Path(tempfile.mkdtemp(prefix="bench-")) / "big.bin"
    with big.open("wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(MiB))
    return big


def remove(big: Path) -> None:
    big.unlink(missing_ok=True)
    big.parent.rmdir()


def print_table(results: Timings, rss: dict[str, dict[str, int]], raw_name: str, n: int,
                big_mib: int) -> None:
    """The markdown table of a driver-vs-raw run (medians of the rounds), then every round's
    wall time of the big uploads (workloads whose label says "MiB upload")."""
    print(f"| workload | ours | {raw_name} | ratio (ours/raw time) | peak RSS (ours / raw) "
          "| client CPU (ours / raw) | server CPU (ours / raw) |")
    print("|---|---|---|---|---|---|---|")
    for label, times in results.items():
        ours_t, raw_t = (statistics.median(t[0] for t in times[w]) for w in ("ours", "raw"))
        ours_c, raw_c = (statistics.median(t[1] for t in times[w]) for w in ("ours", "raw"))
        ours_m, raw_m = (statistics.median(t[2] for t in times[w]) for w in ("ours", "raw"))
        if "MiB upload" in label:
            ours_s = f"{ours_t:.2f} s ({big_mib / ours_t:.0f} MiB/s)"
            raw_s = f"{raw_t:.2f} s ({big_mib / raw_t:.0f} MiB/s)"
            peak = f"{rss[label]['ours'] / MiB:.0f} MiB / {rss[label]['raw'] / MiB:.0f} MiB"
        else:
            ours_s = f"{n / ours_t:.0f} ops/s"
            raw_s = f"{n / raw_t:.0f} ops/s"
            peak = "-"
        print(f"| {label} | {ours_s} | {raw_s} | {ours_t / raw_t:.2f}x | {peak} "
              f"| {ours_c:.2f} s / {raw_c:.2f} s | {ours_m:.2f} s / {raw_m:.2f} s |")
    for label, times in results.items():
        if "MiB upload" in label:
            walls = {w: [round(t[0], 2) for t in times[w]] for w in ("ours", "raw")}
            print(f"\n{label}, every round (s): ours {walls['ours']}, raw {walls['raw']}")
