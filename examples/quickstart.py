"""Quick start: an Application with StorageModule.configure() on the default local driver.

Run from the project root:  python examples/quickstart.py
It stores files under ./storage (created at boot), prints every step and the domain events the
storage calls published to the lexigram-events bus, and removes what it wrote.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

# Framework logs go to stdout; keep the demo output readable (set before lexigram is imported).
os.environ.setdefault("LEX_LOGGING__LEVEL", "WARNING")
os.environ.setdefault("LEX_QUIET", "1")
# configure() with no argument reads the app's `storage:` section and LEX_STORAGE__* variables.
# Signed URLs on the local driver need an HMAC key; this one is for the demo only.
os.environ.setdefault("LEX_STORAGE__DRIVERS__LOCAL__SIGNING_KEY", "quickstart-demo-key-not-for-prod")

from lexigram.logging import configure_logging

configure_logging(level="WARNING")  # before the imports below log their module registrations

from lexigram import Application  # noqa: E402
from lexigram.contracts.events import EventBusProtocol  # noqa: E402
from lexigram.contracts.infra.storage import BlobStoreProtocol  # noqa: E402
from lexigram.di.module import Module, module  # noqa: E402
from lexigram.events.module import EventsModule  # noqa: E402

from lexigram_storage import (  # noqa: E402
    FileDeletedEvent,
    FileDownloadedEvent,
    FileUploadedEvent,
    StorageModule,
)


class ReportService:
    """Application code: it only asks for the default store."""

    def __init__(self, store: BlobStoreProtocol) -> None:
        self.store = store

    async def publish(self, month: str, rows: list[str]) -> str:
        info = await self.store.upload(f"reports/{month}.csv", "\n".join(rows) + "\n")
        return info.path


def build_root() -> type[Module]:
    @module(imports=[EventsModule.configure(), StorageModule.configure()])
    class AppModule(Module):
        pass

    return AppModule


async def main() -> None:
    async with Application.boot(name="quickstart", modules=[build_root()]) as app:
        container = app.container
        bus = await container.resolve(EventBusProtocol)
        received: list[Any] = []
        for event_type in (FileUploadedEvent, FileDownloadedEvent, FileDeletedEvent):
            bus.subscribe(event_type, received.append)

        store = await container.resolve(BlobStoreProtocol)
        print(f"backend: {store!r}")
        reports = ReportService(store)

        path = await reports.publish("2026-11", ["month,revenue", "2026-11,1200"])
        await store.upload("images/logo.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                           metadata={"owner": "design"}, cache_control="public, max-age=3600")
        print(f"uploaded: {path}")

        print("listing:")
        async for item in store.list():
            print(f"  {item.path:22} {item.size:5} B  {item.content_type:18} etag={item.etag}")

        print(f"download: {await store.download(path)!r}")
        chunks = [chunk async for chunk in store.stream(path, chunk_size=8)]
        print(f"stream:   {len(chunks)} chunks of <= 8 bytes, {sum(map(len, chunks))} bytes")

        url = await store.get_presigned_url(path, expires_in=timedelta(minutes=5))
        print(f"presigned GET: {url}")
        verified = store.verify_presigned_url(url)  # type: ignore[attr-defined]
        print(f"verified key:  {verified}")

        await store.delete(path)
        await store.delete("images/logo.svg")
        print(f"exists after delete: {await store.exists(path)}")

        await store.flush_events(5)  # type: ignore[attr-defined]
        print("events published:")
        for event in received:
            size = getattr(event, "size_bytes", "")
            print(f"  {event.event_type:20} {event.backend}:{event.file_key} {size}")


if __name__ == "__main__":
    asyncio.run(main())
