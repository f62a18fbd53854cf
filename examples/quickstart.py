"""Quick start: an Application with StorageModule.configure() on the default local driver.

Run from the project root:  python examples/quickstart.py
It stores files under ./storage, prints every step and the domain events the storage calls
published to the lexigram-events bus, then removes what it created: its two objects, and the
folders the local driver made for itself (./storage, ./storage/.lexigram and its staging and
meta folders) when they did not exist before and are empty. Whatever ./storage held before is
left as it was: if either of the tour's keys already holds an object, it stops before writing.
With a root configured elsewhere (application.yaml, LEX_STORAGE__DRIVERS__LOCAL__ROOT_DIR) only
the two objects are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import timedelta
from pathlib import Path
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


# The objects the tour writes and deletes again.
TOUR_KEYS = ("reports/2026-11.csv", "images/logo.svg")

# The embedded default root, and the folders the local driver creates in it for itself.
DEFAULT_ROOT = Path("storage")
DRIVER_DIRS = [DEFAULT_ROOT / ".lexigram" / "staging", DEFAULT_ROOT / ".lexigram" / "meta",
               DEFAULT_ROOT / ".lexigram", DEFAULT_ROOT]  # innermost first


def driver_dirs_present() -> set[Path]:
    return {directory for directory in DRIVER_DIRS if directory.is_dir()}


def remove_new_empty_dirs(root: Path | None, existed_before: set[Path]) -> None:
    """Remove the driver's folders this run created, if empty; never a file, never an old folder."""
    if root != DEFAULT_ROOT.absolute():
        return  # a root configured elsewhere: its folders are the user's business
    for directory in DRIVER_DIRS:
        if directory not in existed_before:
            with contextlib.suppress(OSError):  # not empty (or gone): keep it
                directory.rmdir()


def build_root() -> type[Module]:
    @module(imports=[EventsModule.configure(), StorageModule.configure()])
    class AppModule(Module):
        pass

    return AppModule


async def main() -> None:
    existed_before = driver_dirs_present()
    root: Path | None = None
    try:
        async with Application.boot(name="quickstart", modules=[build_root()]) as app:
            container = app.container
            bus = await container.resolve(EventBusProtocol)
            received: list[Any] = []
            for event_type in (FileUploadedEvent, FileDownloadedEvent, FileDeletedEvent):
                bus.subscribe(event_type, received.append)

            store = await container.resolve(BlobStoreProtocol)
            root = getattr(store, "root", None)  # the local driver's root folder
            print(f"backend: {store!r}")
            for key in TOUR_KEYS:  # the tour overwrites and deletes these: never someone's own
                if await store.exists(key):
                    raise SystemExit(f"the store already holds {key!r}; the quick start leaves it "
                                     "alone (run it in another directory)")
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

            await store.delete_many(TOUR_KEYS)
            print(f"exists after delete: {await store.exists(path)}")

            await store.flush_events(5)  # type: ignore[attr-defined]
            print("events published:")
            for event in received:
                size = getattr(event, "size_bytes", "")
                print(f"  {event.event_type:20} {event.backend}:{event.file_key} {size}")
    finally:  # the application has stopped and closed its drivers
        remove_new_empty_dirs(root, existed_before)


if __name__ == "__main__":
    asyncio.run(main())
