"""LocalDriver: the key -> file name mapping, ranges past the end, concurrent writers and
deleters."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lexigram_storage.drivers import local
from lexigram_storage.drivers.local import INTERNAL_DIR, LocalDriver

MiB = 1024 * 1024
NAME_MAX = 255


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalDriver]:
    async with LocalDriver(tmp_path / "root", name="disk") as driver:
        yield driver


def staging(root: Path) -> list[str]:
    path = root / INTERNAL_DIR / "staging"
    return sorted(os.listdir(path)) if path.exists() else []


def disk_names(root: Path) -> list[str]:
    """Every name below the root, outside the driver's own area."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and INTERNAL_DIR in dirnames:
            dirnames.remove(INTERNAL_DIR)
        names += dirnames + filenames
    return names


def user_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and INTERNAL_DIR in dirnames:
            dirnames.remove(INTERNAL_DIR)
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
    return sorted(out)


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
        for name in local._components(key):
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
    """A delete prunes the directories it empties while an upload creates in them."""
    for i in range(150):
        base = f"r{i % 5}"
        await store.upload(f"{base}/old", b"old")
        results = await asyncio.gather(
            store.upload(f"{base}/sub/new", b"new"),
            store.delete(f"{base}/old"),
            store.upload(f"{base}/a/b/c/new", b"new"),
            return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == [], i
        assert await store.download(f"{base}/sub/new") == b"new"
        assert await store.download(f"{base}/a/b/c/new") == b"new"
        await asyncio.gather(store.delete(f"{base}/sub/new"), store.delete(f"{base}/a/b/c/new"))
    assert await listed(store) == []
    assert user_files(store.root) == []


async def test_objects_that_become_directories_concurrently(store: LocalDriver) -> None:
    """Writing p, p/q and p/q/r at once: p and p/q turn into directories while written."""
    for i in range(400):
        keys = [f"p{i % 7}", f"p{i % 7}/q", f"p{i % 7}/q/r"]
        random.shuffle(keys)
        results = await asyncio.gather(*(store.upload(k, k.encode()) for k in keys),
                                       return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == [], i
        for k in keys:
            assert await store.download(k) == k.encode()
        results = await asyncio.gather(*(store.delete(k) for k in keys), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == [], i
    assert await listed(store) == []
    assert user_files(store.root) == []


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
