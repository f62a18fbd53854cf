"""LocalDriver: the key -> file name mapping, and ranges past the end."""

from __future__ import annotations

import os
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
