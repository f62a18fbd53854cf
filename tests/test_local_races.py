"""LocalDriver: the key -> file name mapping, ranges past the end, concurrent writers and
deleters, cancellation at the commit point."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lexigram_storage.drivers.local import INTERNAL_DIR, LocalDriver, layout
from lexigram_storage.models import ObjectInfo
from tests.support import staging, user_files

MiB = 1024 * 1024
NAME_MAX = 255


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalDriver]:
    async with LocalDriver(tmp_path / "root", name="disk") as driver:
        yield driver


def disk_names(root: Path) -> list[str]:
    """Every name below the root, outside the driver's own area."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and INTERNAL_DIR in dirnames:
            dirnames.remove(INTERNAL_DIR)
        names += dirnames + filenames
    return names



async def listed(store: LocalDriver, prefix: str = "") -> list[str]:
    return [info.path async for info in store.list(prefix)]


# ---------------------------------------------------------------------------- key -> names


LONG_SEGMENT_KEYS = [
    "é" * 127 + "a",  # exactly 255 bytes: the name of an object beside a directory is longer
    "è" * 128,  # 256 bytes in 128 characters
    "😁" * 64,
    "€" * 86,
    "x" * 255,
    "x" * 200 + "é" * 30,
    "d/" + "€" * 86 + "/f",
    "a" * 199 + "😁" * 3 + "b",  # the 200-byte cut falls inside a 4-byte character
    "é" * 509,  # 1018 bytes: with "-moved" below, the longest key
]


def test_every_key_maps_to_names_that_fit_with_their_suffixes() -> None:
    for key in [*LONG_SEGMENT_KEYS, "é" * 512, "é/" * 341 + "x", ".lexigram", ".lexigram/x"]:
        for name in layout.components(key):
            assert len((name + "\x02").encode()) <= NAME_MAX, (key, name)


@pytest.mark.parametrize("key", LONG_SEGMENT_KEYS, ids=range(len(LONG_SEGMENT_KEYS)))
async def test_long_segments_round_trip(store: LocalDriver, key: str) -> None:
    old = await store.upload(key, b"old", metadata={"v": "1"})
    new = await store.upload(key, b"new", metadata={"v": "2"})
    assert await store.download(key) == b"new"
    assert (await store.info(key)).etag == new.etag != old.etag
    assert await listed(store) == [key]
    head = key.rpartition("/")[0]
    folder = head + "/" if head else ""
    assert [f.path for f in (await store.list_dir(folder)).files] == [key]
    # the key is also a "directory" of another key
    child = key + "/c"
    await store.upload(child, b"child")
    await store.upload(key, b"again", metadata={"v": "3"})
    assert await store.download(key) == b"again"
    assert await store.download(child) == b"child"
    assert await listed(store) == [key, child]
    assert await listed(store, key) == [key, child]
    assert await listed(store, key + "/") == [child]
    listing = await store.list_dir(folder)
    assert ([f.path for f in listing.files], listing.prefixes) == ([key], [key + "/"])
    await store.copy(key, key + "-copy")
    await store.move(child, key + "-moved")
    assert await store.download(key + "-copy") == b"again"
    assert await store.download(key + "-moved") == b"child"
    assert (await store.info(key + "-copy")).metadata == {"v": "3"}
    assert await listed(store) == sorted([key, key + "-copy", key + "-moved"])
    for k in (key, key + "-copy", key + "-moved"):
        await store.delete(k)
    assert await listed(store) == []
    assert user_files(store.root) == []
    assert all(len(n.encode()) <= NAME_MAX for n in disk_names(store.root))


async def test_a_255_byte_name_beside_a_directory_never_half_fails(store: LocalDriver) -> None:
    key = "é" * 127 + "a"
    await store.upload(key + "/child", b"child")
    await store.upload(key, b"first")  # stored beside the directory (name + "\x02")
    await store.upload(key, b"second")
    assert await store.download(key) == b"second"
    assert await listed(store) == [key, key + "/child"]


# ---------------------------------------------------------------------------- .lexigram keys


OWN_AREA_KEYS = [".lexigram", ".lexigram/x", ".lexigramX", ".lexigram/staging/x",
                 ".lexigram/meta/1-2", "a/.lexigram", "a/.lexigram/b", ".lexigram.txt"]


async def test_keys_under_lexigram_are_ordinary_keys(store: LocalDriver) -> None:
    await store.upload("plain", b"p")
    for key in OWN_AREA_KEYS:
        await store.upload(key, key.encode(), metadata={"k": "v"})
    everything = sorted([*OWN_AREA_KEYS, "plain"])
    assert await listed(store) == everything
    assert await listed(store, ".lexigram") == sorted(k for k in everything
                                                      if k.startswith(".lexigram"))
    assert await listed(store, ".lexigram/") == [".lexigram/meta/1-2", ".lexigram/staging/x",
                                                 ".lexigram/x"]
    top = await store.list_dir()
    assert [f.path for f in top.files] == [".lexigram", ".lexigram.txt", ".lexigramX", "plain"]
    assert top.prefixes == [".lexigram/", "a/"]
    for key in OWN_AREA_KEYS:
        assert await store.download(key) == key.encode()
        assert (await store.info(key)).metadata == {"k": "v"}
        assert [c async for c in store.stream(key, offset=1)] == [key.encode()[1:]]
    await store.copy(".lexigram/x", ".lexigram/y")
    await store.move(".lexigram/y", ".lexigram")  # onto the object that is also a directory
    assert await store.download(".lexigram") == b".lexigram/x"
    # the driver's own area is untouched and still works
    assert staging(store.root) == []
    await store.upload("after", b"a")
    assert (await store.health_check()).status.value == "healthy"
    for key in [*OWN_AREA_KEYS, "plain", "after"]:
        await store.delete(key)
    assert await listed(store) == []
    assert user_files(store.root) == []
    assert (store.root / INTERNAL_DIR / "staging").is_dir()


# ---------------------------------------------------------------------------- ranges


async def test_ranges_past_the_end_are_empty(store: LocalDriver) -> None:
    await store.upload("k", b"0123456789")
    await store.upload("big", b"b" * (2 * MiB + 5))
    for key in ("k", "big"):
        for offset, length in [(10**20, None), (10**20, 5), (2**63, None), (2**63 - 1, 1),
                               (2**64 + 1, 10**30)]:
            assert [c async for c in store.stream(key, offset=offset, length=length)] == []
    assert [c async for c in store.stream("k", offset=3, length=10**20)] == [b"3456789"]
    assert b"".join([c async for c in store.stream("big", offset=2 * MiB, length=2**70)]) == (
        b"b" * 5)
    assert [c async for c in store.stream("k", length=10**20, chunk_size=4)] == [
        b"0123", b"4567", b"89"]
    with pytest.raises(FileNotFoundError):
        async for _ in store.stream("missing", offset=10**20):
            pass


# ---------------------------------------------------------------------------- directory races


async def test_uploads_racing_deletes_in_the_same_directory(store: LocalDriver) -> None:
    """A delete prunes the directories it empties while uploads create in them."""
    bases = [f"r{j}" for j in range(10)]
    for i in range(40):
        await asyncio.gather(*(store.upload(f"{b}/old", b"old") for b in bases))
        calls = []
        for b in bases:
            calls += [store.upload(f"{b}/sub/new", b"new"), store.delete(f"{b}/old"),
                      store.upload(f"{b}/a/b/c/new", b"new")]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == [], i
        for b in bases:
            assert await store.download(f"{b}/sub/new") == b"new"
            assert await store.download(f"{b}/a/b/c/new") == b"new"
        await asyncio.gather(*(store.delete(f"{b}/{k}") for b in bases
                               for k in ("sub/new", "a/b/c/new")))
    assert await listed(store) == []
    assert user_files(store.root) == []


async def test_objects_that_become_directories_concurrently(store: LocalDriver) -> None:
    """Writing p, p/q and p/q/r at once: p and p/q turn into directories while written."""
    rng = random.Random(3)
    for i in range(60):
        keys = [k for j in range(8) for k in (f"p{j}", f"p{j}/q", f"p{j}/q/r")]
        rng.shuffle(keys)
        results = await asyncio.gather(*(store.upload(k, k.encode()) for k in keys),
                                       return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == [], i
        for k in keys:
            assert await store.download(k) == k.encode()
        rng.shuffle(keys)
        results = await asyncio.gather(*(store.delete(k) for k in keys), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == [], i
    assert await listed(store) == []
    assert user_files(store.root) == []


async def test_upload_into_a_directory_pruned_under_it(store: LocalDriver,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact interleaving: the upload has opened ``d`` when a delete empties and prunes it,
    then creates ``sub`` in it."""
    await store.upload("d/old", b"old")
    mkdir = os.mkdir
    raced: list[str] = []

    def pruned_first(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if path == "sub" and dir_fd is not None and not raced:
            raced.append(path)
            assert store._delete_sync("d/old")  # removes d, now empty
        mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", pruned_first)
    await store.upload("d/sub/new", b"new")
    assert raced
    assert await listed(store) == ["d/sub/new"]


@pytest.mark.parametrize("then", ["kept", "deleted"])
async def test_object_turned_into_a_directory_by_another_writer_first(
        store: LocalDriver, monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """The exact interleaving: a writer of ``p/q`` sees the object ``p`` where it needs a
    directory; before it moves ``p`` aside, a writer of ``p/r`` does (and, *deleted*, ``p``
    is then deleted): its own move must neither fail nor move the new directory."""
    await store.upload("p", b"p")
    rename = os.rename
    raced: list[str] = []

    def converted_first(src: str, dst: str, *, src_dir_fd: int | None = None,
                        dst_dir_fd: int | None = None) -> None:
        if (src, dst) == ("p", "p\x02") and not raced:
            raced.append(src)
            rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            os.mkdir("p", dir_fd=src_dir_fd)
            (store.root / "p" / "r").write_bytes(b"r")
            if then == "deleted":
                os.unlink("p\x02", dir_fd=src_dir_fd)
        rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "rename", converted_first)
    await store.upload("p/q", b"q")
    monkeypatch.undo()
    assert raced
    assert await listed(store) == (["p"] if then == "kept" else []) + ["p/q", "p/r"]
    assert await store.download("p/q") == b"q"
    assert await store.download("p/r") == b"r"
    assert await store.exists("p") == (then == "kept")


async def test_delete_finds_an_object_moving_back_from_beside_a_pruned_directory(
        store: LocalDriver) -> None:
    """``p`` lives beside the directory ``p`` (as ``p\\x02``); deleting ``p/q`` prunes that
    directory while ``p`` is rewritten onto its own name: a delete of ``p`` still finds it."""
    keys = [f"p{j}" for j in range(20)]
    for _ in range(30):
        await asyncio.gather(*(store.upload(k + "/q", b"q") for k in keys))
        await asyncio.gather(*(store.upload(k, b"old") for k in keys))
        calls = []
        for k in keys:
            calls += [store.delete(k + "/q"), store.upload(k, b"new"), store.delete(k)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        await asyncio.gather(*(store.delete(k, missing_ok=True) for k in keys))  # "new" may
    assert await listed(store) == []  # have been written after the delete
    assert user_files(store.root) == []


# ---------------------------------------------------------------------------- cancellation


async def _chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for i in range(n):
        await asyncio.sleep(0)
        yield bytes([65 + i % 26]) * size


async def _cancel_after(coro: object, ticks: int, delay: float) -> tuple[str, object]:
    """Run *coro* as a task, cancel it after *ticks* loop iterations plus *delay* seconds;
    ("cancelled", None) or ("done", result)."""
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    for _ in range(ticks):
        await asyncio.sleep(0)
    if delay:
        await asyncio.sleep(delay)
    task.cancel()
    try:
        result = await task
    except asyncio.CancelledError:
        return "cancelled", None
    return "done", result


def _same_object(a: ObjectInfo, b: ObjectInfo) -> bool:
    return (a.etag, a.size, a.metadata, a.content_type) == (b.etag, b.size, b.metadata,
                                                            b.content_type)


@pytest.mark.parametrize("payload", ["small", "large"])
@pytest.mark.parametrize("xattrs", [True, False], ids=["xattr", "sidecar"])
async def test_cancelled_upload_either_stored_or_changed_nothing(store: LocalDriver,
                                                                 payload: str,
                                                                 xattrs: bool) -> None:
    if not xattrs:
        store._meta.use_sidecars()  # as on a filesystem without user xattrs
    meta_dir = store.root / INTERNAL_DIR / "meta"
    rng = random.Random(8)
    outcomes = {"cancelled": 0, "done": 0}
    rounds = 120 if payload == "small" else 40
    for i in range(rounds):
        key = f"c/{i % 3}/obj"
        old = await store.upload(key, f"old {i}".encode(), metadata={"round": str(i)})
        if payload == "small":
            data: object = f"new {i}".encode() * 50
            expected = f"new {i}".encode() * 50
        else:
            data = _chunks(40, 64 * 1024)
            expected = b"".join([bytes([65 + j % 26]) * (64 * 1024) for j in range(40)])
        ticks = i % 12 if i < rounds // 2 else 0
        delay = 0.0 if i < rounds // 2 else rng.random() * (0.001 if payload == "small" else 0.02)
        outcome, result = await _cancel_after(
            store.upload(key, data, metadata={"new": "yes"}), ticks, delay)  # type: ignore[arg-type]
        outcomes[outcome] += 1
        now = await store.info(key)
        if outcome == "cancelled":
            assert _same_object(now, old), (i, ticks, delay)
            assert await store.download(key) == f"old {i}".encode()
        else:
            assert isinstance(result, ObjectInfo)
            assert _same_object(now, result) and now.metadata == {"new": "yes"}
            assert await store.download(key) == expected
        assert staging(store.root) == [], i
        assert await listed(store, "c/") == sorted({f"c/{j % 3}/obj" for j in range(i + 1)})
        assert user_files(store.root) == sorted({f"c/{j % 3}/obj" for j in range(i + 1)})
        if not store._meta.xattrs:  # one sidecar (record + anchor) per object, none for an
            names = os.listdir(meta_dir)  # abandoned temp file
            records = [n for n in names if not n.endswith(".link")]
            assert len(records) == min(i + 1, 3), (i, names)
            assert sorted(names) == sorted(records + [f"{n}.link" for n in records]), (i, names)
    assert outcomes["cancelled"] and outcomes["done"], outcomes


async def test_cancel_during_the_commit_returns_the_stored_object(store: LocalDriver) -> None:
    """Cancels that land while the commit runs in its thread: the call completes normally."""
    await store.upload("k", b"old")
    loop = asyncio.get_running_loop()
    on_commit: list[Callable[[], object]] = []
    release = threading.Event()
    replace = store._replace

    def slow_replace(*args: Any) -> None:  # the existing name: renamed over it
        loop.call_soon_threadsafe(on_commit[0])
        release.wait(10)
        replace(*args)

    store._replace = slow_replace  # type: ignore[method-assign]
    try:
        for data in (b"new", _chunks(40, 64 * 1024)):
            release.clear()
            task = asyncio.ensure_future(store.upload("k", data))

            def cancel_twice(task: asyncio.Future[ObjectInfo] = task) -> None:
                task.cancel()
                loop.call_later(0.01, task.cancel)  # a second cancel while waiting
                loop.call_later(0.02, release.set)

            on_commit[:] = [cancel_twice]
            info = await task
            assert (await store.info("k")).etag == info.etag
            assert await store.download("k") == (data if isinstance(data, bytes) else
                                                 b"".join(bytes([65 + j % 26]) * 64 * 1024
                                                          for j in range(40)))
        # asyncio.timeout simply exits: the work finished
        release.clear()
        async with asyncio.timeout(None) as timeout:

            def expire() -> None:
                timeout.reschedule(loop.time())
                loop.call_later(0.01, release.set)

            on_commit[:] = [expire]
            info = await store.upload("k", b"timed")
        assert timeout.expired()
        assert (await store.info("k")).etag == info.etag
        assert await store.download("k") == b"timed"
    finally:
        del store._replace
    assert staging(store.root) == []


async def test_cancelled_copy_and_move_either_happened_or_changed_nothing(
        store: LocalDriver) -> None:
    rng = random.Random(4)
    outcomes: set[str] = set()
    for i in range(80):
        src, dst = f"s/{i}", "d/obj"
        await store.upload(src, b"s" * (i * 20_000), metadata={"from": "src"})
        old = await store.upload(dst, f"old {i}".encode(), metadata={"from": "old"})
        op = store.copy if i % 2 else store.move
        ticks = (i // 2) % 6 if i < 40 else 0
        delay = 0.0 if i < 40 else rng.random() * 0.002
        outcome, result = await _cancel_after(op(src, dst), ticks, delay)
        outcomes.add(outcome)
        now = await store.info(dst)
        if outcome == "cancelled":
            assert _same_object(now, old), i
            assert await store.download(src) == b"s" * (i * 20_000)
        else:
            assert isinstance(result, ObjectInfo)
            assert now.etag == result.etag and now.metadata == {"from": "src"}
            assert await store.download(dst) == b"s" * (i * 20_000)
            assert await store.exists(src) == (op == store.copy)
        await store.delete(src, missing_ok=True)
        assert staging(store.root) == []
        assert user_files(store.root) == ["d/obj"]
    assert outcomes == {"cancelled", "done"}


async def test_stream_cancelled_while_its_file_is_opened_closes_it(
        store: LocalDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.upload("k", b"k" * 100)
    opened, release = threading.Event(), threading.Event()
    open_and_read = store._open_and_read

    def slow(*args: Any) -> Any:
        result = open_and_read(*args)
        opened.set()
        release.wait(10)
        return result

    monkeypatch.setattr(store, "_open_and_read", slow)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for _ in range(3):
        opened.clear()
        release.clear()
        first = asyncio.ensure_future(anext(store.stream("k")))
        await asyncio.to_thread(opened.wait, 10)
        first.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
    for _ in range(500):  # the threads hand their results back to the loop
        if open_fds() <= before:
            break
        await asyncio.sleep(0.01)
    assert open_fds() <= before
