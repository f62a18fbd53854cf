"""The worker threads of the local driver: one pool for every blocking call, and the commit
guarantee of writes under cancellation.

One pool
    Every blocking call of every local driver runs in ``pool()`` (as many threads as asyncio's
    default executor; named ``lexigram-local_N``), through ``hop``: its threads hand results
    back with a single ``call_soon_threadsafe`` (``run_in_executor`` chains a second future
    through it: ~40% more per hop). Nothing goes to the event loop's default executor.

Cancellation (``hop_commit``)
    An upload, copy or move ends with one hop that commits (the link or rename). A cancellation
    that arrives before that commit begins aborts the call: the hop stops before the commit (or
    never starts), is waited for, its temp file is removed, nothing changed, and
    ``CancelledError`` propagates. Once the commit has begun it is not interrupted: the call
    waits for it (through further cancellations) and then completes as if it had not been
    cancelled -- the object is stored and its info returned (the cancellation is consumed:
    ``asyncio.timeout`` exits without ``TimeoutError``) -- or raises the commit's own error."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["THREAD_NAME_PREFIX", "Abandoned", "Gate", "hop", "hop_commit", "pool", "settle"]

T = TypeVar("T")

THREAD_NAME_PREFIX = "lexigram-local"
_POOL: tuple[int, ThreadPoolExecutor | None] = (0, None)


def pool() -> ThreadPoolExecutor:
    """The worker threads of every local driver (as many as asyncio's default executor has;
    a new pool after a fork, whose child has none of the parent's threads)."""
    global _POOL
    pid, current = _POOL
    if current is None or pid != os.getpid():
        current = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4),
                                     thread_name_prefix=THREAD_NAME_PREFIX)
        _POOL = (os.getpid(), current)
    return current


def hop(fn: Callable[..., T], *args: Any,
        release: Callable[[T], object] | None = None) -> asyncio.Future[T]:
    """Run ``fn(*args)`` in a worker thread of ``pool()``; await the result.

    As with ``run_in_executor``, a call cancelled before its thread picked it up does not run;
    a result that arrives after the call was cancelled is passed to *release* (an fd to
    close)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    pool().submit(_run_job, loop, fut, fn, args, release)
    return fut


def _run_job(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[T], fn: Callable[..., T],
             args: tuple[Any, ...], release: Callable[[T], object] | None) -> None:
    if fut.cancelled():  # the caller gave up before a thread was free
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        loop.call_soon_threadsafe(_job_failed, fut, exc)
    else:
        loop.call_soon_threadsafe(_job_done, fut, result, release)


def _job_done(fut: asyncio.Future[T], result: T, release: Callable[[T], object] | None) -> None:
    if not fut.done():
        fut.set_result(result)
    elif release is not None:  # the caller gave up while the thread worked
        release(result)


def _job_failed(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Abandoned(Exception):
    """Raised in a worker thread: the call was cancelled before its commit began."""


class Gate:
    """Whether a write may still commit. The worker thread calls ``enter()`` just before the
    commit, the event loop ``abandon()`` when the call is cancelled: the first one wins."""

    __slots__ = ("_lock", "_state")

    _OPEN, _COMMITTING, _ABANDONED = range(3)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = self._OPEN

    def check(self) -> None:
        """Raise ``Abandoned`` if the call was cancelled (spares the work before the commit)."""
        if self._state == self._ABANDONED:
            raise Abandoned

    def enter(self) -> None:
        """The commit begins: from now on a cancellation waits for it. Raises ``Abandoned``
        if the call was cancelled first."""
        with self._lock:
            if self._state == self._ABANDONED:
                raise Abandoned
            self._state = self._COMMITTING

    def abandon(self) -> bool:
        """The call is cancelled: ``True`` if the commit is prevented, ``False`` if it began."""
        with self._lock:
            if self._state == self._COMMITTING:
                return False
            self._state = self._ABANDONED
            return True


class _Waiter(asyncio.Future[T]):
    """What the caller of a committing hop awaits in place of the hop's own future (like the
    outer future of ``asyncio.shield``, so the thread's outcome is never lost). Cancelling it
    abandons the gate at once: a hop that no thread has picked up yet will not commit."""

    def __init__(self, gate: Gate, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._gate = gate

    def cancel(self, msg: Any | None = None) -> bool:
        self._gate.abandon()
        return super().cancel(msg=msg)

    def follow(self, fut: asyncio.Future[T]) -> None:
        """Take the outcome of the hop's future *fut* (unless cancelled meanwhile)."""
        if self.done():
            return
        exc = fut.exception()
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(fut.result())


async def hop_commit(gate: Gate, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)``, a hop whose commit *gate* guards, in a worker thread; await it with
    the guarantee of the module docstring: cancelled before the commit began, the hop is
    stopped there, waited for, and ``CancelledError`` propagates; once it began, the hop is
    waited for through cancellations, which are consumed, and its outcome is the call's."""
    task = asyncio.current_task()
    cancelling = task.cancelling() if task is not None else 0
    fut = hop(fn, *args)
    waiter: _Waiter[T] = _Waiter(gate, loop=asyncio.get_running_loop())
    fut.add_done_callback(waiter.follow)
    try:
        return await waiter
    except asyncio.CancelledError:
        if gate.abandon():
            await settle(fut)  # the thread removes its temp file
            raise
    await settle(fut)
    if task is not None:
        while task.cancelling() > cancelling:
            task.uncancel()
    return fut.result()


async def settle(fut: asyncio.Future[Any]) -> None:
    """Wait until *fut* is done, through cancellations (cleanup must not race a thread)."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({fut})
    if not fut.cancelled():
        fut.exception()  # retrieved: no "never retrieved" warning
