"""LocalDriver on every platform: path confinement per strategy, the portable switch, sidecar
metadata under concurrency, first use from many threads, one thread pool for every blocking
call, and hostile presigned URLs.

The macOS strategy (``fcntl(F_GETPATH)``) cannot run on Linux. It differs from Linux's only in
the call that tells where an fd lies, so it is tested here as "fd-path only": Linux's
``/proc/self/fd`` as that call, and none of Linux's extras (``O_TMPFILE``, xattrs, cached reads),
exactly the code path a Mac runs; the shared check of the real path is tested on its own with a
stand-in for the call. The portable walk runs for real."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from lexigram.contracts.core.health import HealthStatus

from lexigram_storage.drivers.local import INTERNAL_DIR, LocalDriver, fastpath, threads
from lexigram_storage.drivers.local.platforms import Escape, Platform, darwin, linux, portable
from lexigram_storage.errors import InvalidPathError, StoragePermissionError

MiB = 1024 * 1024
P = ParamSpec("P")
T = TypeVar("T")


def strategies() -> list[Platform]:
    """Every confinement strategy this machine can run."""
    found = []
    if linux.AVAILABLE:
        found += [linux.PLATFORM, Platform("fd-path-only", linux.fd_path)]
    if darwin.AVAILABLE:
        found.append(darwin.PLATFORM)
    found.append(portable.PLATFORM)
    return found


def driver_with(root: Path, platform: Platform, **kwargs: Any) -> LocalDriver:
    driver = LocalDriver(root, portable=False, **kwargs)
    driver._tree.platform = platform
    driver._temps.tmpfile = platform.tmpfile
    driver._meta.xattrs = None if platform.xattrs else False
    return driver


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory (None) under *path*."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), path)] = None
        for name in filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, path)] = Path(full).read_bytes()
    return out


async def chunks(*blocks: bytes) -> AsyncIterator[bytes]:
    for block in blocks:
        await asyncio.sleep(0)
        yield block


async def drain(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in it])


# ---------------------------------------------------------------------------- confinement


@pytest.mark.local_modes("native")
@pytest.mark.parametrize("platform", strategies(), ids=lambda p: p.name)
async def test_every_operation_through_a_symlink_to_outside_is_refused(
        tmp_path: Path, platform: Platform) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"secret")
    (outside / "sub" / "deep.txt").write_bytes(b"deep")
    root = tmp_path / "root"
    store = driver_with(root, platform, signing_key="k")
    async with store:
        await store.upload("inside.txt", b"inside")
        (root / "linkdir").symlink_to(outside)
        (root / "linkfile").symlink_to(outside / "secret.txt")
        (root / "to-internal").symlink_to(root / INTERNAL_DIR)
        before = tree(outside)
        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "upload into": lambda: store.upload("linkdir/new.txt", b"x"),
            "upload over": lambda: store.upload("linkdir/secret.txt", b"pwned"),
            "upload deeper": lambda: store.upload("linkdir/sub/new.txt", b"x"),
            "upload new dirs": lambda: store.upload("linkdir/a/b/new.txt", b"x"),
            "upload streamed": lambda: store.upload("linkdir/big.bin", chunks(b"b" * MiB, b"b" * MiB)),
            "upload create-only": lambda: store.upload("linkdir/c.txt", b"x", if_none_match="*"),
            "upload into internal": lambda: store.upload("to-internal/staging/evil", b"x"),
            "download via dir": lambda: store.download("linkdir/secret.txt"),
            "download via file": lambda: store.download("linkfile"),
            "download deep": lambda: store.download("linkdir/sub/deep.txt"),
            "stream via dir": lambda: drain(store.stream("linkdir/secret.txt")),
            "stream via file": lambda: drain(store.stream("linkfile", offset=1)),
            "info via dir": lambda: store.info("linkdir/secret.txt"),
            "info via file": lambda: store.info("linkfile"),
            "exists via dir": lambda: store.exists("linkdir/secret.txt"),
            "exists via file": lambda: store.exists("linkfile"),
            "copy from dir": lambda: store.copy("linkdir/secret.txt", "stolen.txt"),
            "copy from file": lambda: store.copy("linkfile", "stolen.txt"),
            "copy into": lambda: store.copy("inside.txt", "linkdir/planted.txt"),
            "move from dir": lambda: store.move("linkdir/secret.txt", "stolen.txt"),
            "move from file": lambda: store.move("linkfile", "stolen.txt"),
            "move into": lambda: store.move("inside.txt", "linkdir/planted.txt"),
            "delete via dir": lambda: store.delete("linkdir/secret.txt"),
            "delete deep": lambda: store.delete("linkdir/sub/deep.txt"),
        }
        not_refused = []
        for name, operation in operations.items():
            try:
                await operation()
            except InvalidPathError:
                continue
            except Exception as exc:
                not_refused.append(f"{name}: {exc!r}")
            else:
                not_refused.append(name)
        assert not_refused == []
        assert tree(outside) == before
        assert [i.path async for i in store.list()] == ["inside.txt"]
        assert [i.path async for i in store.list("linkdir/")] == []
        assert await store.download("inside.txt") == b"inside"
        assert not (root / "stolen.txt").exists()
        assert os.listdir(root / INTERNAL_DIR / "staging") == []


@pytest.mark.local_modes("native")
@pytest.mark.parametrize("platform", strategies(), ids=lambda p: p.name)
async def test_symlinks_inside_the_root_per_strategy(tmp_path: Path, platform: Platform) -> None:
    """Strategies that can tell where an fd lies follow a symlink that stays inside the root;
    the portable walk refuses every symlink, and says so."""
    store = driver_with(tmp_path / "root", platform)
    async with store:
        await store.upload("real/file.txt", b"inside")
        (store.root / "alias.txt").symlink_to(store.root / "real" / "file.txt")
        (store.root / "aliasdir").symlink_to(store.root / "real")
        for key in ("alias.txt", "aliasdir/file.txt"):
            if platform.fd_path is not None:
                assert await store.download(key) == b"inside"
            else:
                with pytest.raises(InvalidPathError, match="symlink"):
                    await store.download(key)
        await store.upload("alias.txt", b"replaces the link")  # never writes through it
        assert (store.root / "real" / "file.txt").read_bytes() == b"inside"
        assert not (store.root / "alias.txt").is_symlink()


@pytest.mark.local_modes("native")
def test_the_real_path_check_shared_by_fd_path_strategies(tmp_path: Path) -> None:
    """What Linux and macOS share: the path the kernel reports for an fd is checked against the
    root (here a stand-in reports the paths); a failed or impossible lookup is a refusal."""
    reported: dict[int, str] = {}

    def fd_path(fd: int) -> str:
        if fd not in reported:
            raise OSError(9, "Bad file descriptor")
        return reported[fd]

    store = driver_with(tmp_path / "root", Platform("stand-in", fd_path))
    root = store._tree.real
    cases = {
        root: True,
        f"{root}/a": True,
        f"{root}/a/b.txt": True,
        f"{root}/.lexigramx/a": True,
        f"{root}/{INTERNAL_DIR}": False,
        f"{root}/{INTERNAL_DIR}/meta/1-2": False,
        f"{root}x/a": False,
        os.path.dirname(root): False,
        "/": False,
        "/etc/passwd": False,
    }
    for i, (path, allowed) in enumerate(cases.items()):
        reported[i] = path
        if allowed:
            store._tree.check_fd(i, "k")
        else:
            with pytest.raises(Escape):
                store._tree.check_fd(i, "k")
    with pytest.raises(Escape):
        store._tree.check_fd(12345, "k")  # the lookup fails: refused, never passed
    walker = driver_with(tmp_path / "root", portable.PLATFORM)
    with pytest.raises(Escape):
        walker._tree.check_fd(0, "k")  # a strategy that cannot tell: refused


@pytest.mark.local_modes("native")
@pytest.mark.skipif(not linux.AVAILABLE, reason="the stand-in reports paths from /proc/self/fd")
async def test_a_file_reported_under_another_of_its_names(tmp_path: Path) -> None:
    """macOS's F_GETPATH reports the name a hard-linked file was last looked up by, which for
    an object with a sidecar may be its anchor in .lexigram/meta (refused on its own): the
    object is still served when its key leads to that very file without a symlink, and a
    symlink to an outside file with several names is still refused."""
    root = tmp_path / "root"
    meta = root / INTERNAL_DIR / "meta"

    def last_name_looked_up(fd: int) -> str:
        st = os.fstat(fd)
        anchor = meta / f"{st.st_dev}-{st.st_ino}.link"
        return str(anchor) if anchor.exists() else linux.fd_path(fd)

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    os.link(outside / "secret.txt", outside / "second-name.txt")
    store = driver_with(root, Platform("last-name", last_name_looked_up))
    async with store:
        await store.upload("a/b.txt", b"hello", metadata={"k": "v"})
        fd = os.open(root / "a" / "b.txt", os.O_RDONLY)
        try:
            assert last_name_looked_up(fd).startswith(str(meta))  # (what the driver is told)
        finally:
            os.close(fd)
        assert await store.download("a/b.txt") == b"hello"
        assert await drain(store.stream("a/b.txt")) == b"hello"
        assert (await store.info("a/b.txt")).metadata == {"k": "v"}
        await store.copy("a/b.txt", "c.txt")
        await store.move("c.txt", "d/e.txt")
        assert await store.download("d/e.txt") == b"hello"
        assert [i.path async for i in store.list()] == ["a/b.txt", "d/e.txt"]
        (root / "linkfile").symlink_to(outside / "secret.txt")
        with pytest.raises(InvalidPathError):
            await store.download("linkfile")
        with pytest.raises(InvalidPathError):
            await store.copy("linkfile", "stolen.txt")


@pytest.mark.skipif(not darwin.AVAILABLE, reason="fcntl(F_GETPATH) is macOS-only")
@pytest.mark.local_modes("native")
def test_darwin_fd_path_reports_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert os.path.samefile(darwin.fd_path(fd), tmp_path / "f")
    finally:
        os.close(fd)


def test_strategy_selection(tmp_path: Path, local_mode: str) -> None:
    """One switch: the environment (or portable=True) picks the portable pieces."""
    store = LocalDriver(tmp_path / "root")
    if local_mode == "portable":
        assert store._tree.platform is portable.PLATFORM
    elif linux.AVAILABLE:
        assert store._tree.platform is linux.PLATFORM
    assert LocalDriver(tmp_path / "root", portable=True)._tree.platform is portable.PLATFORM
    assert LocalDriver(tmp_path / "root", portable=False)._tree.platform is not portable.PLATFORM or not (
        linux.AVAILABLE or darwin.AVAILABLE)


# ---------------------------------------------------------------------------- the portable switch


async def test_portable_mode_uses_no_linux_path(tmp_path: Path, local_mode: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Portable mode never touches xattrs, /proc/self/fd, O_TMPFILE, openat2 or preadv2 (the
    native run proves each tripwire fires), and shows it on disk: no xattr, a sidecar per
    object, named temp files in staging."""
    tripped: set[str] = set()

    def wire(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            tripped.add(name)
            return real(*args, **kwargs)
        return call

    for name in ("setxattr", "getxattr", "readlink", "preadv"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, wire(name, getattr(os, name)))
    monkeypatch.setattr(fastpath, "open_cached", wire("openat2", fastpath.open_cached))
    real_open, real_link = os.open, os.link
    tmpfile = getattr(os, "O_TMPFILE", 0)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if tmpfile and flags & tmpfile == tmpfile:
            tripped.add("O_TMPFILE")
        return real_open(path, flags, *args, **kwargs)

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(src).startswith("/proc/"):
            tripped.add("/proc/self/fd")
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "link", link)

    root = tmp_path / "root"
    staging = root / INTERNAL_DIR / "staging"
    reached, release = asyncio.Event(), asyncio.Event()

    async def held_upload() -> AsyncIterator[bytes]:
        yield b"h" * (3 * MiB // 2)
        yield b"h" * (3 * MiB // 2)  # the first block's hop has been awaited by now
        reached.set()
        await release.wait()
        yield b"h"

    async with LocalDriver(root, signing_key="k") as store:
        await store.upload("m/a.txt", b"a", metadata={"k": "v"})
        await store.upload("m/a.txt", b"a2", metadata={"k": "v2"})
        await store.upload("b.bin", chunks(b"b" * MiB, b"b" * MiB))
        assert await store.download("m/a.txt") == b"a2"
        assert await store.download("m/a.txt") == b"a2"  # cached now, where that exists
        assert await drain(store.stream("b.bin")) == b"b" * 2 * MiB
        assert (await store.info("m/a.txt")).metadata == {"k": "v2"}
        await store.copy("m/a.txt", "c.txt")
        await store.move("c.txt", "d/e.txt")
        assert [i.path async for i in store.list()] == ["b.bin", "d/e.txt", "m/a.txt"]
        await store.health_check()
        upload = asyncio.ensure_future(store.upload("held.bin", held_upload()))
        await reached.wait()
        temps = os.listdir(staging)
        release.set()
        await upload
        await store.delete("b.bin")
        if local_mode == "portable":
            assert store._tree.platform.name == "portable"
            assert tripped == set()
            assert [t for t in temps if t.endswith(".tmp")]  # a named temp file
            assert "user.lexigram" not in os.listxattr(root / "m" / "a.txt")
            st = os.stat(root / "m" / "a.txt")
            meta = root / INTERNAL_DIR / "meta"
            assert (meta / f"{st.st_dev}-{st.st_ino}").is_file()
            assert os.stat(meta / f"{st.st_dev}-{st.st_ino}.link").st_ino == st.st_ino
        elif linux.AVAILABLE:
            assert temps == []  # O_TMPFILE: unnamed
            expected = {"setxattr", "getxattr", "readlink", "O_TMPFILE", "/proc/self/fd"}
            if fastpath._openat2 is not None:
                expected |= {"openat2", "preadv"}
            assert expected <= tripped


# ---------------------------------------------------------------------------- sidecar metadata


def sidecar_driver(root: Path, kind: str) -> LocalDriver:
    if kind == "portable":
        return LocalDriver(root, portable=True)
    driver = LocalDriver(root, portable=False)
    driver._meta.xattrs = False  # a Linux filesystem without user xattrs
    return driver


def sidecar_files(root: Path) -> list[str]:
    meta = root / INTERNAL_DIR / "meta"
    return sorted(os.listdir(meta)) if meta.exists() else []


def sidecars_of(root: Path, *keys: str) -> list[str]:
    out = []
    for key in keys:
        st = os.stat(root / key)
        out += [f"{st.st_dev}-{st.st_ino}", f"{st.st_dev}-{st.st_ino}.link"]
    return sorted(out)


@pytest.mark.local_modes("native")
@pytest.mark.parametrize("kind", ["portable", "no-xattr"])
async def test_concurrent_writers_never_lose_sidecar_metadata(tmp_path: Path, kind: str) -> None:
    """Many rounds of writers racing on one key: info() always describes the stored bytes.
    (Before: a writer dropped the sidecar of a reused inode number; 3-13% of rounds lost it.)"""
    root = tmp_path / "root"
    async with sidecar_driver(root, kind) as store:
        lost = []
        for round_ in range(150):
            bodies = [bytes([i]) * (20_000 + i % 2) for i in range(10)]  # many equal sizes
            await asyncio.gather(*(
                store.upload("hot.bin", chunks(b[:10_000], b[10_000:]), metadata={"w": str(i)})
                for i, b in enumerate(bodies)))
            data = await store.download("hot.bin")
            info = await store.info("hot.bin")
            if (info.etag, info.metadata) != (hashlib.sha256(data).hexdigest(), {"w": str(data[0])}):
                lost.append(round_)
        assert lost == []
        await store.prepare()  # collects what racing renames could not know they replaced
        assert sidecar_files(root) == sidecars_of(root, "hot.bin")


@pytest.mark.local_modes("native")
@pytest.mark.parametrize("kind", ["portable", "no-xattr"])
async def test_sidecars_follow_their_objects(tmp_path: Path, kind: str) -> None:
    """A sidecar lives exactly as long as its object: through overwrite, copy, move, delete,
    a refused create-only write, and a writer killed before naming its file."""
    root = tmp_path / "root"
    async with sidecar_driver(root, kind) as store:
        await store.upload("a", b"1", metadata={"v": "1"})
        await store.upload("a", b"2", metadata={"v": "2"})
        await store.upload("big", chunks(b"x" * MiB, b"y" * MiB), metadata={"v": "big"})
        await store.copy("a", "b")
        await store.move("b", "c/d")
        with pytest.raises(Exception, match="exists"):
            await store.upload("a", b"3", if_none_match="*")
        assert sidecar_files(root) == sidecars_of(root, "a", "big", "c/d")
        assert [(await store.info(k)).metadata for k in ("a", "big", "c/d")] == [
            {"v": "2"}, {"v": "big"}, {"v": "2"}]
        await store.delete("big")
        await store.upload("c/d", b"new")
        assert (await store.info("c/d")).metadata == {}
        assert sidecar_files(root) == sidecars_of(root, "a", "c/d")
        # a writer killed between its sidecar and its name: prepare() collects the anchor
        orphan = root / INTERNAL_DIR / "staging" / "999999999-dead-1.tmp"
        orphan.write_bytes(b"orphan")
        st = os.stat(orphan)
        store._meta.sidecars.write(os.open(orphan, os.O_RDONLY), b"{}", str(orphan))
        assert len(sidecar_files(root)) == 6
        await store.prepare()
        assert sidecar_files(root) == sidecars_of(root, "a", "c/d")
        assert not orphan.exists()
        assert st.st_ino not in {os.stat(root / k).st_ino for k in ("a", "c/d")}


# ---------------------------------------------------------------------------- first use


@pytest.mark.local_modes("native")
async def test_first_use_from_many_threads_prepares_once(tmp_path: Path) -> None:
    """Concurrent uploads to a never-prepared driver, every worker thread starting at once:
    1,500 uploads in 30 rounds (before: 20-35 of 1,500 failed with StorageBootError "File exists
    (.../<pid>-<hex>-probe)": each thread prepared the driver, with the same probe file)."""
    pool = threads.pool()
    for attempt in range(30):
        store = LocalDriver(tmp_path / f"root{attempt}")
        gate = threading.Event()
        busy = [asyncio.wrap_future(pool.submit(gate.wait, 10)) for _ in range(pool._max_workers)]
        uploads = asyncio.gather(*(store.upload(f"k/{i}", b"x") for i in range(50)),
                                 return_exceptions=True)
        for _ in range(1000):  # until every upload waits for a thread
            if pool._work_queue.qsize() >= 50:
                break
            await asyncio.sleep(0.001)
        gate.set()
        await asyncio.gather(*busy)
        results = await uploads
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert len([i async for i in store.list()]) == 50
        await store.close()


async def test_two_drivers_on_one_root_prepare_at_once(tmp_path: Path) -> None:
    drivers = [LocalDriver(tmp_path / "root") for _ in range(8)]
    await asyncio.gather(*(d.prepare() for d in drivers for _ in range(5)))
    await asyncio.gather(*(d.upload(f"k{i}", b"x") for i, d in enumerate(drivers)))
    assert os.listdir(tmp_path / "root" / INTERNAL_DIR / "staging") == []


# ---------------------------------------------------------------------------- one thread pool


class _RecordingExecutor(ThreadPoolExecutor):
    """An event loop's default executor that records every job it is given."""

    def __init__(self) -> None:
        super().__init__(max_workers=2, thread_name_prefix="default-executor")
        self.jobs: list[str] = []

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        self.jobs.append(getattr(fn, "__qualname__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


async def test_every_blocking_call_runs_in_the_driver_pool(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Uploads (bytes, streams), downloads, streams (with their read-ahead), info, copy, move,
    listings, deletes and the health probe never use the event loop's default executor: every
    blocking call runs in a thread of the driver's one pool (before: a stream's read-ahead ran
    in the default executor), or on the loop where it cannot block (cached reads)."""
    loop = asyncio.get_running_loop()
    default = _RecordingExecutor()
    loop.set_default_executor(default)
    ran_in: dict[str, set[str]] = {}  # os function -> names of the threads that called it

    def record(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(real)
        def call(*args: Any, **kwargs: Any) -> Any:
            ran_in.setdefault(name, set()).add(threading.current_thread().name)
            return real(*args, **kwargs)
        return call

    store = LocalDriver(tmp_path / "root")  # (the constructor looks up the root's real path)
    for name in ("open", "pread", "read", "write", "writev", "link", "rename", "unlink",
                 "scandir", "mkdir", "rmdir"):
        monkeypatch.setattr(os, name, record(name, getattr(os, name)))
    big = os.urandom(3 * MiB + 5)
    async with store:
        await store.upload("a/small.txt", b"small")
        await store.upload("a/big.bin", chunks(*(big[i:i + 64 * 1024]
                                                  for i in range(0, len(big), 64 * 1024))))
        assert await drain(store.stream("a/big.bin", chunk_size=8192)) == big
        assert await drain(store.stream("a/big.bin", offset=MiB // 2, length=2 * MiB)) == \
            big[MiB // 2:MiB // 2 + 2 * MiB]
        assert await store.download("a/big.bin") == big
        assert await store.download("a/small.txt") == b"small"
        assert await store.download("a/small.txt") == b"small"  # cached now, where that exists
        await store.copy("a/big.bin", "b/copy.bin")
        await store.move("b/copy.bin", "c/moved.bin")
        assert (await store.info("c/moved.bin")).size == len(big)
        assert [i.path async for i in store.list()] == ["a/big.bin", "a/small.txt", "c/moved.bin"]
        assert (await store.list_dir("a/")).prefixes == []
        await store.delete("a/small.txt")
        assert await store.delete_many(["a/big.bin", "nothing"]) == ["a/big.bin", "nothing"]
        assert await store.clear() == 1
        assert (await store.health_check()).status == HealthStatus.HEALTHY
    assert default.jobs == []
    loop_thread = threading.current_thread().name
    workers = {t for names in ran_in.values() for t in names} - {loop_thread}
    assert workers and all(t.startswith(threads.THREAD_NAME_PREFIX + "_") for t in workers)
    assert {name for name, names in ran_in.items() if loop_thread in names} == set()


# ---------------------------------------------------------------------------- presigned URLs


@pytest.mark.local_modes("native")
async def test_every_hostile_presigned_url_is_a_permission_error(tmp_path: Path) -> None:
    store = LocalDriver(tmp_path / "root", signing_key="k", base_url="https://cdn.example/files")
    url = await store.get_presigned_url("dir/a b.txt", 300)
    assert store.verify_presigned_url(url) == "dir/a b.txt"
    base, query = url.split("?")
    q = {k: v[0] for k, v in parse_qs(query).items()}
    sig, exp = q["signature"], q["expires"]

    def with_(**changes: str) -> str:
        merged = {**q, **changes}
        return base + "?" + "&".join(f"{k}={v}" for k, v in merged.items())

    hostile = {
        "superscript digits": with_(expires="\u00b9\u00b2\u00b3"),
        "arabic-indic digits": with_(expires="\u0661\u0662\u0663\u0664\u0665\u0666\u0667"),
        "fullwidth digits": with_(expires="\uff11\uff12\uff13"),
        "5,000-digit expiry": with_(expires="9" * 5000),
        "negative expiry": with_(expires="-1"),
        "signed expiry": with_(expires="+" + exp),
        "padded expiry": with_(expires="0" + exp),
        "float expiry": with_(expires=exp + ".5"),
        "empty expiry": with_(expires=""),
        "bad percent in path": base.replace("a%20b", "a%ffb") + "?" + query,
        "truncated percent in path": base + "%" + "?" + query,
        "bad percent in query": url + "&x=%ff",
        "bad percent in signature": with_(signature="%ff" + sig[3:]),
        "surrogate in path": base + "\udcff?" + query,
        "missing method": url.replace(f"method={q['method']}&", ""),
        "missing expires": url.replace(f"expires={exp}&", ""),
        "missing signature": url.split("&signature=")[0],
        "no query": base,
        "duplicate signature": url + f"&signature={sig}",
        "duplicate expires": url + f"&expires={exp}",
        "duplicate method": url + "&method=GET",
        "lowercase method": with_(method="get"),
        "unknown method": with_(method="DELETE"),
        "wrong method": with_(method="PUT"),
        "other base path": url.replace("/files/", "/other/"),
        "base path prefix": url.replace("/files/", "/filesx/"),
        "no path": "https://cdn.example?" + query,
        "other key": url.replace("a%20b", "a%20c"),
        "short signature": with_(signature=sig[:-1]),
        "long signature": with_(signature=sig + "0"),
        "uppercase signature": with_(signature=sig.upper()),
        "non-hex signature": with_(signature="z" * 64),
        "non-ASCII signature": with_(signature="é" * 64),
        "empty signature": with_(signature=""),
        "extended expiry": with_(expires=str(int(exp) + 3600)),
        "bad IPv6 host": "https://[::1/files/dir/a%20b.txt?" + query,
        "traversal key": base.replace("dir/a%20b.txt", "..%2F..%2Fetc") + "?" + query,
        "empty": "",
        "garbage": "\x00\x01\x02",
    }
    wrong = {}
    for name, bad in hostile.items():
        try:
            wrong[name] = f"accepted as {store.verify_presigned_url(bad)!r}"
        except StoragePermissionError:
            continue
        except Exception as exc:
            wrong[name] = repr(exc)
    assert wrong == {}
    with pytest.raises(StoragePermissionError, match="signed for GET"):
        store.verify_presigned_url(url, "PUT")


@pytest.mark.local_modes("native")
async def test_presigned_url_lasts_at_least_expires_in(tmp_path: Path) -> None:
    """The expiry is rounded up to the second, never down (before: truncated, so a 1 s URL
    could be expired 0.4 s later)."""
    store = LocalDriver(tmp_path / "root", signing_key="k")
    for seconds in (1, 1.5, 30, 3600):
        before = time.time()
        url = await store.get_presigned_url("a.txt", seconds)
        expires = int(parse_qs(urlsplit(url).query)["expires"][0])
        assert expires >= before + seconds
        assert expires <= time.time() + seconds + 1
        assert store.verify_presigned_url(url) == "a.txt"
