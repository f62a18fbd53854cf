"""LocalDriver specifics: atomicity, crash safety, path safety, metadata, signed URLs, layout."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
from lexigram.contracts.infra.storage import StorageError, StorageUnsupportedOperationError
from pydantic import SecretStr

from lexigram_storage.config import NamedStorageConfig, StorageLocalConfig
from lexigram_storage.drivers.local import INTERNAL_DIR, LocalDriver, fastpath, threads
from lexigram_storage.errors import (
    InvalidPathError,
    PreconditionFailedError,
    QuotaExceededError,
    StorageBootError,
    StorageFileNotFoundError,
    StoragePermissionError,
)
from lexigram_storage.payload import UploadPolicy
from lexigram_storage.registry import DriverContext
from tests.support import staging, user_files

MiB = 1024 * 1024


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalDriver]:
    async with LocalDriver(tmp_path / "root", signing_key="s3cret", name="disk") as driver:
        yield driver




async def slow_chunks(n: int, size: int, gate: asyncio.Event | None = None,
                      delay: float = 0.0) -> AsyncIterator[bytes]:
    block = b"n" * size
    for i in range(n):
        if gate is not None and i == n // 2:
            gate.set()
        if delay:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
        yield block


# ---------------------------------------------------------------------------- construction


async def test_from_named_and_bucket(tmp_path: Path) -> None:
    entry = NamedStorageConfig(name="files", driver="local", local=StorageLocalConfig(
        root_dir=str(tmp_path / "r"), base_url="https://cdn.example/f/",
        signing_key=SecretStr("zq-signing-secret"), fsync=True))
    driver = LocalDriver.from_named(entry, DriverContext(policy=UploadPolicy(max_bytes=3)))
    assert isinstance(driver, LocalDriver)
    assert driver.name == "files"
    assert driver.bucket == str(tmp_path / "r")
    assert driver.fsync
    assert driver.policy == UploadPolicy(max_bytes=3)
    await driver.prepare()
    assert (await driver.upload("a b.txt", b"x")).size == 1
    assert await driver.get_url("a b.txt") == "https://cdn.example/f/a%20b.txt"
    assert "zq-signing-secret" not in repr(driver)


async def test_root_created_at_prepare_and_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "root"
    driver = LocalDriver(root)
    await driver.prepare()
    assert root.is_dir()
    lazy = LocalDriver(tmp_path / "lazy")
    await lazy.upload("x", b"1")  # no prepare(): the first write creates the root
    assert (tmp_path / "lazy" / "x").read_bytes() == b"1"


async def test_unusable_root_is_a_boot_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    root = blocker / "storage"  # cannot be created, even by root
    with pytest.raises(StorageBootError) as exc:
        await LocalDriver(root, name="broken").prepare()
    assert str(root) in exc.value.message
    assert "broken" in exc.value.message


# ---------------------------------------------------------------------------- atomicity


async def test_reader_sees_old_or_new_during_large_upload_and_copy(store: LocalDriver) -> None:
    old, new = b"o" * (3 * MiB), 8 * MiB
    await store.upload("obj.bin", old)
    await store.upload("src.bin", b"s" * (6 * MiB))
    seen: set[int] = set()
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            seen.add((await store.info("obj.bin")).size)
            seen.add(len(await store.download("obj.bin")))
            await asyncio.sleep(0)

    task = asyncio.create_task(reader())
    await store.upload("obj.bin", slow_chunks(new // (64 * 1024), 64 * 1024))
    await asyncio.sleep(0.01)
    copy_task = asyncio.create_task(store.copy("src.bin", "obj.bin"))
    while not copy_task.done():
        seen.add((await store.info("obj.bin")).size)
        await asyncio.sleep(0)
    await copy_task
    done.set()
    await task
    assert seen <= {len(old), new, 6 * MiB}
    assert new in seen
    assert await store.download("obj.bin") == b"s" * (6 * MiB)
    assert staging(store.root) == []


async def test_cancelled_upload_leaves_nothing_and_keeps_old(store: LocalDriver) -> None:
    await store.upload("keep.bin", b"old")
    gate = asyncio.Event()
    task = asyncio.create_task(store.upload("keep.bin", slow_chunks(400, 64 * 1024, gate)))
    await gate.wait()
    for _ in range(20):  # a few loop turns: well before the last of the 400 chunks
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.download("keep.bin") == b"old"
    assert staging(store.root) == []
    assert user_files(store.root) == ["keep.bin"]
    assert os.listdir(f"/proc/{os.getpid()}/fd")  # and no leaked descriptors below:
    before = len(os.listdir(f"/proc/{os.getpid()}/fd"))
    task = asyncio.create_task(store.upload("new.bin", slow_chunks(400, 64 * 1024, gate)))
    gate.clear()
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) <= before
    assert not await store.exists("new.bin")


async def test_rejected_uploads_leave_nothing(store: LocalDriver) -> None:
    await store.upload("k.bin", b"old")
    store.policy = UploadPolicy(max_bytes=2 * MiB)
    with pytest.raises(QuotaExceededError):
        await store.upload("k.bin", slow_chunks(64, 64 * 1024))
    store.policy = None

    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * (2 * MiB)
        raise RuntimeError("client went away")

    with pytest.raises(Exception, match="client went away"):
        await store.upload("k.bin", failing())
    assert await store.download("k.bin") == b"old"
    assert staging(store.root) == []
    assert user_files(store.root) == ["k.bin"]


async def test_killed_writer_leaves_no_object_and_prepare_cleans_staging(tmp_path: Path) -> None:
    root = tmp_path / "root"
    script = textwrap.dedent(f"""
        import asyncio, sys
        from lexigram_storage.drivers.local import LocalDriver

        async def body():
            for i in range(10_000):
                if i == 20:
                    print("writing", flush=True)
                yield b"k" * 65536
                await asyncio.sleep(0.001)

        async def main():
            d = LocalDriver({str(root)!r})
            await d.prepare()
            await d.upload("old.bin", b"old")
            d._temps.tmpfile = d._temps.tmpfile and sys.argv[1] != "named"
            await d.upload("old.bin", body())

        asyncio.run(main())
    """)
    for mode in ("tmpfile", "named"):
        await asyncio.to_thread(_kill_mid_write, script, mode)
        driver = LocalDriver(root)
        assert user_files(root) == ["old.bin"]
        assert (root / "old.bin").read_bytes() == b"old"
        if mode == "named":
            assert staging(root) != []  # the dead writer's temp file
        await driver.prepare()
        assert staging(root) == []
        assert [i.path async for i in driver.list()] == ["old.bin"]


def _kill_mid_write(script: str, mode: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script, mode], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != b"writing":  # (logging may print first)
        pass
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# ---------------------------------------------------------------------------- create-only


async def test_create_only_is_atomic_and_keeps_no_temp(store: LocalDriver) -> None:
    await store.upload("c.txt", b"1", if_none_match="*")
    with pytest.raises(PreconditionFailedError):
        await store.upload("c.txt", slow_chunks(40, 64 * 1024), if_none_match="*")
    assert await store.download("c.txt") == b"1"
    assert staging(store.root) == []


# ---------------------------------------------------------------------------- path safety


async def test_traversal_keys_rejected(store: LocalDriver) -> None:
    for key in ["../escape", "a/../../etc/passwd", "/etc/passwd"]:
        with pytest.raises(InvalidPathError):
            await store.upload(key, b"x")
        with pytest.raises(InvalidPathError):
            await store.download(key)
        with pytest.raises(InvalidPathError):
            await store.delete(key)
    assert not (store.root.parent / "escape").exists()
    assert [i async for i in store.list()] == []
    assert [i.path async for i in store.list(".lexi")] == []


# native strategies follow symlinks that stay inside the root; the portable walk refuses every
# symlink (tests/test_local_platform.py)
@pytest.mark.local_modes("native")
async def test_symlinks_leading_outside_are_refused(store: LocalDriver, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (store.root / "linkdir").symlink_to(outside)
    (store.root / "linkfile").symlink_to(outside / "secret.txt")
    (store.root / "to-staging").symlink_to(store.root / INTERNAL_DIR)
    for key in ["linkdir/secret.txt", "linkfile"]:
        with pytest.raises(InvalidPathError, match="outside"):
            await store.download(key)
    with pytest.raises(InvalidPathError):
        await store.exists("linkfile")
    with pytest.raises(InvalidPathError):
        await store.upload("linkdir/new.txt", b"x")
    with pytest.raises(InvalidPathError):
        await store.upload("linkdir/sub/new.txt", b"x")
    with pytest.raises(InvalidPathError):
        await store.upload("to-staging/staging/evil", b"x")
    with pytest.raises(InvalidPathError):
        await store.delete("linkdir/secret.txt")
    with pytest.raises(InvalidPathError):
        await store.copy("linkfile", "stolen.txt")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert [i.path async for i in store.list()] == []
    # a symlink inside the root that stays inside is an ordinary object
    await store.upload("real.txt", b"inside")
    (store.root / "alias.txt").symlink_to(store.root / "real.txt")
    assert await store.download("alias.txt") == b"inside"
    # overwriting the symlink replaces the link, never the file it points to
    await store.upload("linkfile", b"mine")
    assert (outside / "secret.txt").read_bytes() == b"secret"


# ---------------------------------------------------------------------------- files on disk


async def test_files_are_plain_with_umask_permissions(store: LocalDriver, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        driver = LocalDriver(tmp_path / "masked")
        await driver.prepare()
        await driver.upload("small.txt", b"x")
        await driver.upload("big.bin", slow_chunks(40, 64 * 1024))
        await driver.copy("small.txt", "copied.txt")
        for name in ("small.txt", "big.bin", "copied.txt"):
            assert stat.S_IMODE(os.stat(tmp_path / "masked" / name).st_mode) == 0o640
    finally:
        os.umask(old)
    await store.upload("p/plain.txt", b"hello")
    assert (store.root / "p" / "plain.txt").read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(store.root / "p" / "plain.txt").st_mode) == 0o666 & ~old


async def test_empty_directories_removed_after_delete_and_move(store: LocalDriver) -> None:
    await store.upload("a/b/c/d.txt", b"x")
    await store.upload("a/keep.txt", b"x")
    await store.delete("a/b/c/d.txt")
    assert not (store.root / "a" / "b").exists()
    assert (store.root / "a" / "keep.txt").exists()
    await store.move("a/keep.txt", "z/moved.txt")
    assert not (store.root / "a").exists()
    assert user_files(store.root) == ["z/moved.txt"]


async def test_key_that_is_also_a_directory_and_long_segments(store: LocalDriver) -> None:
    await store.upload("a/b", b"file")
    await store.upload("a/b/c", b"child")
    assert await store.download("a/b") == b"file"
    assert await store.download("a/b/c") == b"child"
    await store.upload("a/b", b"file2")
    assert await store.download("a/b") == b"file2"
    assert [i.path async for i in store.list("a/")] == ["a/b", "a/b/c"]
    await store.delete("a/b/c")
    assert await store.download("a/b") == b"file2"
    await store.delete("a/b")
    assert not await store.exists("a/b")
    assert user_files(store.root) == []
    long = "é" * 300 + "/" + "x" * 400
    await store.upload(long, b"long")
    await store.upload("é" * 300 + "-sibling", b"s")
    assert await store.download(long) == b"long"
    assert [i.path async for i in store.list()] == sorted([long, "é" * 300 + "-sibling"])


async def test_listing_order_with_tricky_keys(store: LocalDriver) -> None:
    keys = ["a-b", "a/b", "a.b", "a0", "a", "a!", "a/ b", "a/-", "a/b/c", "b", "a~", "Z",
            "x" * 250 + "a", "x" * 250, "x" * 250 + "/y", "x" * 201 + "-", "ü", "a/b-c",
            "a/b.c", "a/b/c/d"]
    for key in keys:
        await store.upload(key, key.encode())
    listed = [i.path async for i in store.list()]
    assert listed == sorted(keys)
    assert [i.path async for i in store.list("a/b")] == sorted(k for k in keys if k.startswith("a/b"))
    assert [i.path async for i in store.list(start_after="a/b")] == sorted(k for k in keys if k > "a/b")
    for info in [i async for i in store.list("x")]:
        assert info.size == len(info.path.encode())


async def test_listing_is_lazy_and_skips_staging(store: LocalDriver) -> None:
    for i in range(600):
        await store.upload(f"many/{i:04d}", b"x")
    gate = asyncio.Event()
    upload = asyncio.create_task(store.upload("many/zz", slow_chunks(100, 64 * 1024, gate,
                                                                     delay=0.02)))
    await gate.wait()
    it = store.list("many/")
    first = await it.__anext__()
    assert first.path == "many/0000"
    await it.aclose()
    assert len([i async for i in store.list()]) == 600
    await upload
    assert len([i async for i in store.list()]) == 601


# ---------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("xattrs", [True, False], ids=["xattr", "sidecar"])
async def test_metadata_round_trips_through_info_list_copy_move(tmp_path: Path,
                                                                xattrs: bool) -> None:
    driver = LocalDriver(tmp_path / "r")
    if not xattrs:
        driver._meta.xattrs = False
    await driver.prepare()
    up = await driver.upload("m/a.dat", b"data", "text/csv", metadata={"Owner": "ann"},
                             cache_control="max-age=5")
    big = await driver.upload("m/big.dat", slow_chunks(40, 64 * 1024), metadata={"k": "v"})

    def check(info: object, etag: str | None = up.etag) -> None:
        assert info.content_type == "text/csv"  # type: ignore[attr-defined]
        assert info.metadata == {"owner": "ann"}  # type: ignore[attr-defined]
        assert info.cache_control == "max-age=5"  # type: ignore[attr-defined]
        assert info.etag == etag  # type: ignore[attr-defined]

    check(await driver.info("m/a.dat"))
    check(next(iter([i async for i in driver.list("m/a")])))
    check(await driver.copy("m/a.dat", "m/copy.dat"))
    check(await driver.info("m/copy.dat"))
    check(await driver.move("m/copy.dat", "n/moved.dat"))
    check(await driver.info("n/moved.dat"))
    assert (await driver.info("m/big.dat")).metadata == {"k": "v"}
    assert (await driver.info("m/big.dat")).etag == big.etag
    # a new version never shows the former version's metadata
    await driver.upload("m/a.dat", b"v2")
    info = await driver.info("m/a.dat")
    assert info.metadata == {} and info.cache_control is None
    assert info.content_type == "application/octet-stream"
    assert user_files(driver.root) == ["m/a.dat", "m/big.dat", "n/moved.dat"]


async def test_files_placed_by_hand_are_objects(store: LocalDriver) -> None:
    (store.root / "docs").mkdir()
    (store.root / "docs" / "hand.json").write_bytes(b"{}")
    info = await store.info("docs/hand.json")
    assert info.content_type == "application/json"
    assert info.size == 2
    copied = await store.copy("docs/hand.json", "docs/copy.json")
    assert copied.etag == hashlib.sha256(b"{}").hexdigest()


# ---------------------------------------------------------------------------- URLs


async def test_get_url_escapes_the_key(store: LocalDriver) -> None:
    assert await store.get_url("dir/a b?#%.txt") == \
        "http://localhost:8000/storage/dir/a%20b%3F%23%25.txt"


async def test_presigned_urls_verify(store: LocalDriver) -> None:
    url = await store.get_presigned_url("dir/a b.txt", timedelta(minutes=5))
    assert url.startswith("http://localhost:8000/storage/dir/a%20b.txt?")
    assert store.verify_presigned_url(url) == "dir/a b.txt"
    put = await store.get_presigned_url("up.bin", 60, method="PUT")
    assert store.verify_presigned_url(put, "PUT") == "up.bin"
    with pytest.raises(StoragePermissionError, match="signed for PUT"):
        store.verify_presigned_url(put, "GET")
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def variant(path: str = parts.path, **changes: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, path, urlencode({**query, **changes}), ""))

    tampered = [
        variant(path="/storage/dir/other.txt"),
        variant(signature="0" * 64),
        variant(signature=query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")),
        variant(expires=str(int(query["expires"]) + 3600)),
        variant(method="PUT"),
        url.split("&signature=")[0],
    ]
    for bad in tampered:
        with pytest.raises(StoragePermissionError):
            store.verify_presigned_url(bad)
    expired = await store.get_presigned_url("dir/a b.txt", 1)
    other = LocalDriver(store.root, signing_key="another-key")
    with pytest.raises(StoragePermissionError):
        other.verify_presigned_url(url)
    await asyncio.sleep(2.05)
    with pytest.raises(StoragePermissionError, match="expired"):
        store.verify_presigned_url(expired)


async def test_presigned_url_without_key_names_the_setting(tmp_path: Path) -> None:
    driver = LocalDriver(tmp_path / "r", name="nokey")
    with pytest.raises(StorageUnsupportedOperationError) as exc:
        await driver.get_presigned_url("a.txt")
    assert "LEX_STORAGE__DRIVERS__LOCAL__SIGNING_KEY" in str(exc.value.hint)
    assert "nokey" in exc.value.message
    secret = LocalDriver(tmp_path / "r", signing_key=SecretStr("k"))
    assert secret.verify_presigned_url(await secret.get_presigned_url("a.txt")) == "a.txt"


# ---------------------------------------------------------------------------- reads and health


async def test_stream_reads_big_blocks_and_ranges(store: LocalDriver) -> None:
    raw = os.urandom(3 * MiB + 5)
    await store.upload("r.bin", raw)
    chunks = [c async for c in store.stream("r.bin")]
    assert all(len(c) <= 8192 for c in chunks)
    assert b"".join(chunks) == raw
    got = b"".join([c async for c in store.stream("r.bin", 100_000, offset=MiB - 3, length=MiB + 7)])
    assert got == raw[MiB - 3:2 * MiB + 4]
    with pytest.raises(StorageFileNotFoundError):
        _ = [c async for c in store.stream("missing.bin")]
    it = store.stream("r.bin")
    await it.__anext__()
    await it.aclose()  # closing early releases the file


async def test_health_probe_writes_in_staging(store: LocalDriver) -> None:
    result = await store.health_check()
    assert result.details is not None
    assert result.details["root"] == str(store.root)
    assert "probe_ms" in result.details and "latency_ms" in result.details
    assert staging(store.root) == []
    assert [i async for i in store.list()] == []


@pytest.mark.local_modes("native")  # cached reads (openat2/preadv2) are Linux-only
async def test_small_cached_downloads_need_no_thread(store: LocalDriver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if fastpath._openat2 is None:
        pytest.skip("no openat2(RESOLVE_CACHED) / RWF_NOWAIT here")
    await store.upload("a/small.bin", b"s" * 1000)
    await store.upload("a/small.bin/child", b"c")  # the object now lives beside a directory
    await store.upload("empty", b"")
    await store.upload("big.bin", b"b" * (fastpath.INLINE_READ + 1))
    (store.root / "alias").symlink_to(store.root / "empty")
    for name in ("a/small.bin\x02", "empty", "alias"):  # what a first read would bring into
        (store.root / name).read_bytes()              # the kernel's caches (RESOLVE_CACHED)

    def no_thread(*args: object) -> None:
        raise AssertionError("went through a thread")

    monkeypatch.setattr(store, "_hop", no_thread)
    assert await store.download("a/small.bin") == b"s" * 1000
    assert await store.download("empty") == b""
    assert await store.download("alias") == b""
    with pytest.raises(StorageError, match="went through a thread"):  # too big for the loop
        await store.download("big.bin")


async def test_downloads_fall_back_to_a_thread(store: LocalDriver, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    (store.root / "out").symlink_to(tmp_path / "secret")
    await store.upload("k", b"kkk")
    for case in ("no openat2", "lookup not cached", "bytes not cached"):
        with monkeypatch.context() as m:
            if case == "no openat2":
                m.setattr(fastpath, "_openat2", None)
            elif case == "lookup not cached":
                m.setattr(fastpath, "open_cached", lambda path: None)
            else:
                m.setattr(fastpath, "pread_nowait", lambda fd, size: None)
            assert await store.download("k") == b"kkk", case
            with pytest.raises(InvalidPathError, match="outside"):
                await store.download("out")
            with pytest.raises(StorageFileNotFoundError):
                await store.download("missing/k")


@pytest.mark.local_modes("native")  # user xattrs are not used by the portable driver
async def test_plain_metadata_fits_in_the_inode(store: LocalDriver) -> None:
    info = await store.upload("p/x.bin", b"x" * 100)
    raw = os.getxattr(store.root / "p" / "x.bin", "user.lexigram")
    assert len(raw) <= 64 and not raw.startswith(b"{")  # ext4 keeps <= 64 bytes in the inode
    again = await store.info("p/x.bin")
    assert (again.etag, again.content_type, again.created_at) == (
        info.etag, "application/octet-stream", info.created_at)
    # records written as JSON (metadata, or by earlier versions) still read back
    os.setxattr(store.root / "p" / "x.bin", "user.lexigram",
                b'{"ct":"text/x-old","etag":"e1","t":1700000000.5}')
    old = await store.info("p/x.bin")
    assert (old.content_type, old.etag, old.created_at.timestamp()) == (
        "text/x-old", "e1", 1700000000.5)


@pytest.mark.parametrize("tmpfile", [True, False], ids=["tmpfile", "named"])
async def test_staging_removed_behind_our_back(store: LocalDriver, tmpfile: bool) -> None:
    store._temps.tmpfile = store._temps.tmpfile and tmpfile
    await store.upload("a", b"1")
    shutil.rmtree(store.root / INTERNAL_DIR / "staging")
    await store.upload("a", b"2")  # an overwrite: named in staging, then renamed
    await store.upload("b", b"3")
    assert [await store.download(k) for k in ("a", "b")] == [b"2", b"3"]
    assert staging(store.root) == []
    await store.close()
    await store.upload("c", b"4")  # reopened after close()
    assert await store.download("c") == b"4"


async def test_cancelled_before_a_thread_was_free_does_not_run(store: LocalDriver) -> None:
    gate = threading.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def block() -> None:
        loop.call_soon_threadsafe(started.set)
        gate.wait(10)

    busy = [store._hop(block) for _ in range(threads.pool()._max_workers)]
    await started.wait()
    upload = asyncio.ensure_future(store.upload("never", b"x"))
    await asyncio.sleep(0.05)
    upload.cancel()
    gate.set()
    await asyncio.gather(*busy)
    with pytest.raises(asyncio.CancelledError):
        await upload
    await store._hop(int)  # the queue has drained
    assert not await store.exists("never")


async def test_failed_small_write_leaves_no_directories(store: LocalDriver,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    await store.upload("keep/old", b"old")

    def broken(fd: int, path: str | None, meta: object) -> None:
        raise OSError(errno.EIO, "the disk failed")

    monkeypatch.setattr(store._meta, "store", broken)
    for key in ("new/dir/x", "keep/old"):
        with pytest.raises(StorageError, match="the disk failed"):
            await store.upload(key, b"new")
    assert user_files(store.root) == ["keep/old"]
    assert not (store.root / "new").exists()
    assert (store.root / "keep" / "old").read_bytes() == b"old"
    assert staging(store.root) == []


async def test_pruning_never_removes_a_directory_outside_the_root(store: LocalDriver,
                                                                   tmp_path: Path) -> None:
    """A directory on a deleted key's path swapped for a symlink to outside (a race between the
    delete and its pruning): the empty directories the pruning would remove stay untouched."""
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    await store.upload("a/b/c", b"x")
    await store.delete("a/b/c")
    (store.root / "a").mkdir(exist_ok=True)
    os.rmdir(store.root / "a")
    (store.root / "a").symlink_to(outside)  # what a concurrent swap would leave
    store._tree.prune(["a", "b", "c"])  # the pruning step of that delete
    assert (outside / "b").is_dir()
    assert (store.root / "a").is_symlink()
