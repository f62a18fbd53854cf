"""Memory driver throughput: ours (with events to a lexigram-events bus) vs the existing package.

Run: .venv/bin/python bench/bench_memory.py
The existing package (PyPI lexigram-storage==0.1.5009, import lexigram.storage) runs in its own
virtual environment, bench/.venv-ref, created on first use.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")

HERE = Path(__file__).resolve().parent
REF_VENV = HERE / ".venv-ref"
REF_PACKAGE = "lexigram-storage==0.1.5009"
N, SIZE, RUNS = 2000, 4096, 5


def ref_python() -> Path:
    """The Python of the reference venv, creating it (with the existing package) if needed."""
    python = REF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(REF_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import lexigram.storage"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", REF_PACKAGE, "obstore"],
                       check=True)
    return python


REF_SCRIPT = """
import asyncio, json, os, statistics, time
os.environ["LEX_LOGGING__LEVEL"] = "CRITICAL"
from lexigram.storage.drivers.memory import MemoryDriver
N, SIZE, RUNS = %d, %d, %d
async def once():
    d = MemoryDriver()
    data = os.urandom(SIZE)
    t = time.perf_counter()
    for i in range(N):
        await d.upload(f"k/{i}", data)
    up = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(N):
        await d.download(f"k/{i}")
    return up, time.perf_counter() - t
async def main():
    res = [await once() for _ in range(RUNS)]
    print(json.dumps({"upload": statistics.median(r[0] for r in res),
                      "download": statistics.median(r[1] for r in res)}))
asyncio.run(main())
""" % (N, SIZE, RUNS)


async def ours(subscribers: int, include_delivery: bool) -> dict[str, float]:
    from lexigram.events.buses.event import EventBusImpl

    from lexigram_storage import FileDownloadedEvent, FileUploadedEvent, MemoryDriver
    from lexigram_storage.events import StorageEvents

    ups, downs = [], []
    for _ in range(RUNS):
        bus = EventBusImpl()
        received: list[Any] = []
        for _ in range(subscribers):
            bus.subscribe(FileUploadedEvent, received.append)
            bus.subscribe(FileDownloadedEvent, received.append)
        driver = MemoryDriver(name="bench", events=StorageEvents(bus=bus))
        data = os.urandom(SIZE)
        t = time.perf_counter()
        for i in range(N):
            await driver.upload(f"k/{i}", data)
        if include_delivery:
            await driver.flush_events()
        ups.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(N):
            await driver.download(f"k/{i}")
        if include_delivery:
            await driver.flush_events()
        downs.append(time.perf_counter() - t)
        await driver.events.aclose()
        if include_delivery and subscribers:
            assert len(received) == 2 * N * subscribers, len(received)
    return {"upload": statistics.median(ups), "download": statistics.median(downs)}


def rate(seconds: float) -> str:
    return f"{N / seconds:,.0f}/s"


def main() -> None:
    theirs = json.loads(subprocess.run([str(ref_python()), "-c", REF_SCRIPT], check=True,
                                       capture_output=True, text=True).stdout.strip()
                        .splitlines()[-1])
    rows = [
        ("bus, no subscriber", asyncio.run(ours(0, True))),
        ("bus, 1 subscriber (calls)", asyncio.run(ours(1, False))),
        ("bus, 1 subscriber (calls + delivery)", asyncio.run(ours(1, True))),
    ]
    print(f"memory driver, {N} x {SIZE // 1024} KiB, sequential, median of {RUNS} runs\n")
    print("| workload | ours | existing package (no events) | ratio ours/existing |")
    print("|---|---|---|---|")
    for op in ("upload", "download"):
        for label, result in rows:
            print(f"| {op}, {label} | {rate(result[op])} | {rate(theirs[op])} | "
                  f"{theirs[op] / result[op]:.2f}x |")


if __name__ == "__main__":
    main()
