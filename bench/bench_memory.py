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

N, SIZE, RUNS = 2000, 4096, 10


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


ROUNDS = 3  # the existing package and ours take turns, so both see the same machine


def _best(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    return b if a is None else {k: min(a[k], b[k]) for k in b}


def main() -> None:
    labels = [
        ("ours, no events", None, False),
        ("ours, bus without subscribers (incl. delivery)", 0, True),
        ("ours, bus + 1 subscriber (calls only)", 1, False),
        ("ours, bus + 1 subscriber (incl. delivery to the handler)", 1, True),
    ]
    theirs: dict[str, float] | None = None
    best: list[dict[str, float] | None] = [None] * len(labels)
    for _ in range(ROUNDS):
        ref = subprocess.run([str(ref_python()), "-c", REF_SCRIPT, str(N), str(SIZE), str(RUNS)],
                             check=True, capture_output=True, text=True)
        theirs = _best(theirs, json.loads(ref.stdout.strip().splitlines()[-1]))
        for i, (_, subscribers, delivery) in enumerate(labels):
            best[i] = _best(best[i], asyncio.run(ours(subscribers, delivery)))
    assert theirs is not None
    rows = [(label, result) for (label, _, _), result in zip(labels, best, strict=True)
            if result is not None]
    print(f"memory driver, {N} x {SIZE // 1024} KiB, sequential, best of {ROUNDS} x {RUNS} runs "
          "each, the two packages taking turns (the minimum filters out other processes)")
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
