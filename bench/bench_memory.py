"""Memory driver throughput: ours (with events to a lexigram-events bus) vs the existing package.

Run: .venv/bin/python bench/bench_memory.py
The existing package (PyPI lexigram-storage==0.1.5009, import lexigram.storage) runs in its own
virtual environment, bench/.venv-ref, created on first use.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ref_python

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")

N, SIZE, RUNS = 2000, 4096, 15


REF_SCRIPT = """
import asyncio, json, os, statistics, sys, time
os.environ["LEX_LOGGING__LEVEL"] = "CRITICAL"
from lexigram.storage.backends.memory import MemoryDriver
N, SIZE, RUNS = map(int, sys.argv[1:4])
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
    print(json.dumps({"upload": min(r[0] for r in res), "download": min(r[1] for r in res)}))
asyncio.run(main())
"""


async def ours(subscribers: int | None, include_delivery: bool) -> dict[str, float]:
    """Our memory driver; ``subscribers=None`` publishes no events at all."""
    from lexigram.events.buses.event import EventBusImpl

    from lexigram_storage import FileDownloadedEvent, FileUploadedEvent, MemoryDriver
    from lexigram_storage.events import StorageEvents

    ups, downs = [], []
    for _ in range(RUNS):
        bus = EventBusImpl()
        received: list[Any] = []
        for _ in range(subscribers or 0):
            bus.subscribe(FileUploadedEvent, received.append)
            bus.subscribe(FileDownloadedEvent, received.append)
        events = StorageEvents(bus=bus) if subscribers is not None else None
        driver = MemoryDriver(name="bench", events=events)
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
        for task in list(bus._background_tasks):  # the bus has no public close()
            task.cancel()
        await asyncio.sleep(0)
        if include_delivery and subscribers:
            assert len(received) == 2 * N * subscribers, len(received)
    return {"upload": min(ups), "download": min(downs)}


def main() -> None:
    ref = subprocess.run([str(ref_python()), "-c", REF_SCRIPT, str(N), str(SIZE), str(RUNS)],
                         check=True, capture_output=True, text=True)
    theirs = json.loads(ref.stdout.strip().splitlines()[-1])
    rows = [
        ("ours, no events", asyncio.run(ours(None, False))),
        ("ours, bus without subscribers (incl. delivery)", asyncio.run(ours(0, True))),
        ("ours, bus + 1 subscriber (calls only)", asyncio.run(ours(1, False))),
        ("ours, bus + 1 subscriber (incl. delivery to the handler)", asyncio.run(ours(1, True))),
    ]
    print(f"memory driver, {N} x {SIZE // 1024} KiB, sequential, best of {RUNS} runs "
          "(the minimum filters out other processes on a shared machine)")
    print("existing package = lexigram-storage 0.1.5009 bare-dict MemoryDriver, no events\n")
    print("| workload | uploads/s | downloads/s | upload+download pairs/s | vs existing |")
    print("|---|---|---|---|---|")
    their_pairs = N / (theirs["upload"] + theirs["download"])
    print(f"| existing package | {N / theirs['upload']:,.0f} | {N / theirs['download']:,.0f} | "
          f"{their_pairs:,.0f} | 1.00x |")
    for label, result in rows:
        pairs = N / (result["upload"] + result["download"])
        print(f"| {label} | {N / result['upload']:,.0f} | {N / result['download']:,.0f} | "
              f"{pairs:,.0f} | {pairs / their_pairs:.2f}x |")


if __name__ == "__main__":
    main()
