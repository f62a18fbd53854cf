"""Event delivery: failures, back-pressure, drop policy, cancellation, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from lexigram_storage import MemoryDriver
from lexigram_storage.events import StorageEvents


class Failing:
    """A publisher failing on every third event."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.raised = 0

    async def publish(self, event: Any) -> None:
        await asyncio.sleep(0)
        if int(event.file_key.rsplit("/", 1)[1]) % 3 == 0:
            self.raised += 1
            raise RuntimeError(f"subscriber failed on {event.file_key}")
        self.published.append(event.file_key)


async def test_failing_publisher_does_not_stop_delivery() -> None:
    """The failure warning used to pass ``event=`` to the logger (its message argument): the
    resulting TypeError ended the dispatcher at the first failure."""
    publisher = Failing()
    events = StorageEvents(publisher=publisher)
    store = MemoryDriver(name="failing", events=events)
    for i in range(30):
        await store.upload(f"f/{i}", b"x")
    await store.flush_events(5)
    assert publisher.raised == 10
    assert publisher.published == [f"f/{i}" for i in range(30) if i % 3]
    assert events.failures == 10
