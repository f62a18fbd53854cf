"""What the commands print: tables and JSON on stdout, one-line errors and progress bars on
stderr. Progress bars (rich) appear only when stderr is a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["Meter", "SyncBar", "human_size", "iso", "print_json"]

Advance = Callable[[int], None]


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class SyncBar:
    """The bar of one sync: bytes, objects copied, rate and time left."""

    def __init__(self, progress: Progress | None, task: TaskID | None, objects: int) -> None:
        self._progress, self._task, self._objects, self._done = progress, task, objects, 0

    def advance(self, size: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, size)

    def object_done(self, rest: int) -> None:
        """One more object copied; *rest*: its bytes the bar has not seen pass (a copy made
        by the server)."""
        self._done += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=rest, objects=f"{self._done}/{self._objects}")


class Meter:
    """Progress of transfers: bars on a terminal, nothing otherwise."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def _progress(self, *extra: TextColumn) -> Progress:
        # Lines printed to stdout meanwhile go above the bar when stdout is the terminal too;
        # piped, they go to the pipe untouched.
        return Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(), *extra,
            console=Console(stderr=True), redirect_stdout=sys.stdout.isatty())

    @contextmanager
    def transfer(self, label: str, total: int | None) -> Iterator[Advance]:
        """A bar for one transfer; yields the function to call with each chunk's size."""
        if not self.enabled:
            yield lambda _n: None
            return
        with self._progress() as progress:
            task = progress.add_task(label, total=total)
            yield lambda n: progress.advance(task, n)

    @contextmanager
    def sync(self, objects: int, total: int) -> Iterator[SyncBar]:
        if not self.enabled or objects == 0:
            yield SyncBar(None, None, objects)
            return
        with self._progress(TextColumn("{task.fields[objects]} objects")) as progress:
            task = progress.add_task("sync", total=total, objects=f"0/{objects}")
            yield SyncBar(progress, task, objects)


class Forward(Meter):
    """A meter whose transfers advance a sync's bar instead of drawing their own."""

    def __init__(self, advance: Advance) -> None:
        super().__init__(enabled=False)
        self._advance = advance

    @contextmanager
    def transfer(self, label: str, total: int | None) -> Iterator[Advance]:
        yield self._advance
