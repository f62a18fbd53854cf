"""Key-value storage: ``InMemoryKVStorage`` and ``LocalStorage`` (SQLite), every method of
``StorageBackendProtocol`` on both, then what only the local store promises: persistence, crash
safety, concurrent writers in one and in several processes, keys that cannot leave base_path."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lexigram.contracts.core.health import HealthStatus
from lexigram.contracts.infra.storage import StorageBackendProtocol, StorageError, StorageType

from lexigram_storage.errors import InvalidPathError, InvalidPayloadError, StorageUnavailableError
from lexigram_storage.kv import InMemoryKVStorage, LocalStorage
from lexigram_storage.kv.local import DATABASE_NAME, INLINE_LIMIT

ROOT = Path(__file__).resolve().parent.parent

Store = InMemoryKVStorage | LocalStorage


class FakeClock:
    """Seconds since the epoch that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_store(kind: str, path: Path, clock: Callable[[], float] = time.time,
               default_ttl: float | None = None) -> Store:
    if kind == "memory":
        return InMemoryKVStorage(default_ttl=default_ttl, clock=clock)
    return LocalStorage(path, default_ttl=default_ttl, clock=clock, fsync=kind == "local-fsync")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "local", "local-fsync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(kind: str, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    kv = make_store(kind, tmp_path / "kv", clock)
    await kv.connect()
    yield kv
    await kv.disconnect()


# ------------------------------------------------------------------ the protocol, both stores


async def test_implements_the_protocol(store: Store, kind: str) -> None:
    assert isinstance(store, StorageBackendProtocol)
    assert store.storage_type == (StorageType.MEMORY if kind == "memory" else StorageType.FILE)


@pytest.mark.parametrize("value", [
    {"user": 1, "roles": ["a", "b"], "nested": {"x": None, "ok": True, "pi": 3.5}},
    [1, "two", 3.0, False, None, {"k": []}],
    "text with ünïcødé and \U0001f600 and \x00 inside",
    0, -7, 2**70, 1.25, True, False, "", [], {},
])
async def test_set_then_get_returns_the_json_value(store: Store, value: Any) -> None:
    assert await store.set("k", value) is True
    assert await store.get("k") == value
    assert type(await store.get("k")) is type(value)


async def test_get_of_a_missing_key_is_none(store: Store) -> None:
    assert await store.get("missing") is None
    assert not await store.exists("missing")


async def test_values_are_copies(store: Store) -> None:
    value = {"items": [1]}
    await store.set("k", value)
    value["items"].append(2)  # the caller's object is not the stored one
    got = await store.get("k")
    assert got == {"items": [1]}
    got["items"].append(3)
    assert await store.get("k") == {"items": [1]}


async def test_tuples_come_back_as_lists(store: Store) -> None:
    await store.set("k", {"pair": (1, 2)})
    assert await store.get("k") == {"pair": [1, 2]}


async def test_a_null_value_exists(store: Store) -> None:
    await store.set("k", None)
    assert await store.exists("k")
    assert await store.get("k") is None
    assert await store.list_keys() == ["k"]
    assert await store.delete("k") is True


async def test_set_overwrites(store: Store) -> None:
    await store.set("k", 1)
    await store.set("k", {"v": 2})
    assert await store.get("k") == {"v": 2}
    assert await store.list_keys() == ["k"]


async def test_delete_says_whether_the_key_was_there(store: Store) -> None:
    await store.set("k", 1)
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.delete("never") is False
    assert await store.get("k") is None
    assert not await store.exists("k")


@pytest.mark.parametrize("value", [
    {1, 2}, object(), b"bytes", math.nan, {"x": math.inf}, {"k": {(1, 2): "tuple key"}},
    {1: "a", "1": "b"}, [{"ok": {None: 1}}],  # non-str keys: JSON would turn them into str
])
async def test_a_non_json_value_is_a_type_error_naming_the_key(store: Store, value: Any) -> None:
    await store.set("session:42", "old")
    with pytest.raises(TypeError, match="session:42") as exc:
        await store.set("session:42", value)
    assert isinstance(exc.value, InvalidPayloadError)
    assert isinstance(exc.value, StorageError)
    assert "not JSON" in str(exc.value)
    assert await store.get("session:42") == "old"  # nothing stored


async def test_a_circular_value_is_a_type_error(store: Store) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="'k'"):
        await store.set("k", loop)
    assert not await store.exists("k")


@pytest.mark.parametrize("key", ["", "a\x00b", "\ud800"])
async def test_invalid_keys(store: Store, key: str) -> None:
    with pytest.raises(InvalidPathError):
        await store.set(key, 1)
    with pytest.raises(ValueError):
        await store.get(key)
    with pytest.raises(ValueError):
        await store.exists(key)
    with pytest.raises(ValueError):
        await store.delete(key)


async def test_keys_and_namespaces_must_be_text(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.set(1, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.get("k", namespace=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidPathError):
        await store.get("k", namespace="a\x00")
    with pytest.raises(TypeError):
        await store.list_keys(7)  # type: ignore[arg-type]
    with pytest.raises(InvalidPathError):
        await store.list_keys("a\x00*")


@pytest.mark.parametrize(("ttl", "error"), [
    (0, ValueError), (-1, ValueError), (math.nan, ValueError), ("5", TypeError), (True, TypeError),
    (math.inf, ValueError), (10**400, ValueError),
])
async def test_invalid_ttls(store: Store, ttl: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        await store.set("k", 1, ttl=ttl)
    assert not await store.exists("k")


def test_invalid_default_ttl(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        InMemoryKVStorage(default_ttl=0)
    with pytest.raises(ValueError):
        LocalStorage(tmp_path, default_ttl=-5)
    with pytest.raises(ValueError):
        LocalStorage(tmp_path, lock_timeout=0)


# ------------------------------------------------------------------ list_keys


KEYS = ["user:1", "user:2", "user:10", "user:", "User:3", "users", "session:1", "a*b", "a?b",
        "a[1]", "a]b", "a^b", "a-b", "50%", "5_0", "a\\b", "café:1", "caf\u00e9:2", "x.y",
        "user:\U0001f600", "*", "?", "["]


@pytest.fixture
async def listed(store: Store) -> Store:
    for key in KEYS:
        await store.set(key, key)
    return store


async def test_list_keys_without_pattern_is_every_key_sorted(listed: Store) -> None:
    assert await listed.list_keys() == sorted(KEYS)
    assert await listed.list_keys("*") == sorted(KEYS)


@pytest.mark.parametrize(("pattern", "expected"), [
    ("user:*", ["user:", "user:1", "user:10", "user:2", "user:\U0001f600"]),
    ("user:?", ["user:1", "user:2", "user:\U0001f600"]),
    ("user:??", ["user:10"]),
    ("user:[12]", ["user:1", "user:2"]),
    ("user:[!1]", ["user:2", "user:\U0001f600"]),
    ("user:1*", ["user:1", "user:10"]),
    ("[uU]ser:*3", ["User:3"]),
    ("*:1", ["café:1", "session:1", "user:1"]),
    ("user:1", ["user:1"]),  # no wildcard: that key only
    ("user", []),
    ("", []),
    ("a[*]b", ["a*b"]),  # brackets make a special character literal
    ("a[?]b", ["a?b"]),
    ("a[[]1]", ["a[1]"]),
    ("a]b", ["a]b"]),
    ("a^*", ["a^b"]),
    ("a?b", ["a*b", "a-b", "a?b", "a\\b", "a]b", "a^b"]),
    ("50%", ["50%"]),  # SQL LIKE wildcards are plain characters
    ("5_0", ["5_0"]),
    ("%", []),
    ("a\\b", ["a\\b"]),  # a backslash is an ordinary character
    ("café:*", ["café:1", "café:2"]),
    ("[*]", ["*"]),
    ("[[]", ["["]),
    ("?", ["*", "?", "["]),
    ("x.y", ["x.y"]),
    ("x?y", ["x.y"]),
])
async def test_list_keys_glob(listed: Store, pattern: str, expected: list[str]) -> None:
    assert await listed.list_keys(pattern) == expected


# ------------------------------------------------------------------ namespaces


async def test_namespaces_are_isolated(store: Store) -> None:
    await store.set("k", "default")
    await store.set("k", "a", namespace="a")
    await store.set("k", "b", namespace="b")
    await store.set("only-a", 1, namespace="a")
    assert await store.get("k") == "default"
    assert await store.get("k", namespace="") == "default"  # "" is the default namespace
    assert await store.get("k", namespace="a") == "a"
    assert await store.get("k", namespace="b") == "b"
    assert await store.get("only-a") is None
    assert await store.get("only-a", namespace="b") is None
    assert await store.list_keys() == ["k"]
    assert await store.list_keys(namespace="a") == ["k", "only-a"]
    assert await store.list_keys("only*", namespace="a") == ["only-a"]
    assert await store.list_keys(namespace="c") == []
    assert await store.delete("k", namespace="a") is True
    assert await store.get("k") == "default"
    assert await store.get("k", namespace="b") == "b"
    assert await store.exists("only-a", namespace="a")
    assert not await store.exists("only-a")


async def test_namespace_is_not_a_key_prefix(store: Store) -> None:
    await store.set("b:c", "key with a colon", namespace="a")
    await store.set("c", "key c", namespace="a:b")
    assert await store.get("c", namespace="a:b") == "key c"
    assert await store.get("b:c", namespace="a") == "key with a colon"
    assert await store.list_keys(namespace="a") == ["b:c"]
    assert await store.list_keys(namespace="a:b") == ["c"]


async def test_clear_empties_one_namespace(store: Store) -> None:
    await store.set("k", 1)
    await store.set("k", 2, namespace="a")
    await store.set("j", 3, namespace="a")
    await store.set("k", 4, namespace="b")
    assert await store.clear(namespace="a") is True
    assert await store.list_keys(namespace="a") == []
    assert await store.get("k") == 1
    assert await store.get("k", namespace="b") == 4
    assert await store.clear() is True  # the default namespace only
    assert await store.list_keys() == []
    assert await store.get("k", namespace="b") == 4
    assert await store.clear(namespace="never-used") is True


# ------------------------------------------------------------------ TTL


async def test_an_expired_key_is_never_returned(store: Store, clock: FakeClock) -> None:
    await store.set("session", {"id": 1}, ttl=10)
    await store.set("forever", 1)
    clock.advance(9.999)
    assert await store.get("session") == {"id": 1}
    assert await store.exists("session")
    assert await store.list_keys("s*") == ["session"]
    clock.advance(0.001)  # expires at exactly set time + ttl
    assert await store.get("session") is None
    assert not await store.exists("session")
    assert await store.list_keys() == ["forever"]
    assert await store.delete("session") is False  # nothing alive was deleted
    assert await store.get("forever") == 1


async def test_ttl_in_a_namespace_and_fractional(store: Store, clock: FakeClock) -> None:
    await store.set("k", 1, namespace="n", ttl=0.5)
    clock.advance(0.4)
    assert await store.exists("k", namespace="n")
    clock.advance(0.1)
    assert not await store.exists("k", namespace="n")
    assert await store.list_keys(namespace="n") == []


async def test_set_again_replaces_the_ttl(store: Store, clock: FakeClock) -> None:
    await store.set("k", 1, ttl=5)
    await store.set("k", 2)  # no ttl: forever
    clock.advance(3600)
    assert await store.get("k") == 2
    await store.set("k", 3, ttl=5)
    clock.advance(5)
    assert await store.get("k") is None
    await store.set("k", 4)  # an expired key can be set again
    assert await store.get("k") == 4


async def test_default_ttl(kind: str, tmp_path: Path, clock: FakeClock) -> None:
    kv = make_store(kind, tmp_path / "kv", clock, default_ttl=60)
    await kv.connect()
    try:
        await kv.set("default", 1)
        await kv.set("explicit", 1, ttl=120)
        clock.advance(60)
        assert await kv.get("default") is None
        assert await kv.get("explicit") == 1
        clock.advance(60)
        assert await kv.list_keys() == []
    finally:
        await kv.disconnect()


async def test_ttl_in_real_time(kind: str, tmp_path: Path) -> None:
    kv = make_store(kind, tmp_path / "kv")
    await kv.connect()
    try:
        await kv.set("short", 1, ttl=0.2)
        await kv.set("long", 1, ttl=3600)
        assert await kv.exists("short")
        await asyncio.sleep(0.25)
        assert await kv.get("short") is None
        assert await kv.list_keys() == ["long"]
    finally:
        await kv.disconnect()


async def test_expired_keys_are_dropped_from_storage(kind: str, tmp_path: Path,
                                                     clock: FakeClock) -> None:
    """Expired entries do not pile up: every 1000 writes they are removed."""
    kv = make_store(kind, tmp_path / "kv", clock)
    await kv.connect()
    for i in range(100):
        await kv.set(f"tmp:{i}", i, ttl=1)
    clock.advance(1)
    for i in range(1000):
        await kv.set(f"keep:{i}", i)
    await kv.disconnect()  # waits for the local store's maintenance
    if isinstance(kv, LocalStorage):
        with sqlite3.connect(kv.path) as db:
            stored = db.execute("SELECT count(*) FROM kv").fetchone()[0]
    else:
        stored = (await kv.health_check()).details["keys"]  # type: ignore[index]
    assert stored == 1000


# ------------------------------------------------------------------ health


async def test_health_check(store: Store, kind: str) -> None:
    await store.set("k", 1)
    result = await store.health_check()
    assert result.status == HealthStatus.HEALTHY, result.error
    assert result.component == "storage.kv"
    assert result.details is not None
    assert result.details["storage_type"] == ("memory" if kind == "memory" else "file")
    if isinstance(store, LocalStorage):
        assert result.details["path"] == str(store.path)


async def test_local_health_check_fails_when_base_path_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    kv = LocalStorage(blocker / "kv")
    result = await kv.health_check(timeout=5)
    assert result.status == HealthStatus.UNHEALTHY
    assert result.error
    with pytest.raises(StorageError):
        await kv.connect()
    await kv.disconnect()


async def test_local_health_check_fails_while_another_writer_holds_the_lock(
        tmp_path: Path) -> None:
    kv = LocalStorage(tmp_path, lock_timeout=0.1)
    await kv.connect()
    holder = sqlite3.connect(kv.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = await kv.health_check(timeout=5)
        assert result.status == HealthStatus.UNHEALTHY
        assert "locked" in (result.error or "")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await kv.health_check()).status == HealthStatus.HEALTHY
    await kv.disconnect()


# ------------------------------------------------------------------ LocalStorage on disk


async def test_values_persist_across_reopen(tmp_path: Path, clock: FakeClock) -> None:
    kv = LocalStorage(tmp_path / "kv", clock=clock)
    await kv.connect()
    await kv.set("user:1", {"name": "Ada"})
    await kv.set("user:1", {"name": "Ada", "v": 2}, namespace="sessions", ttl=30)
    await kv.set("big", "x" * (INLINE_LIMIT + 1))  # written by the worker thread
    await kv.disconnect()

    again = LocalStorage(tmp_path / "kv", clock=clock)
    await again.connect()
    assert await again.get("user:1") == {"name": "Ada"}
    assert await again.get("user:1", namespace="sessions") == {"name": "Ada", "v": 2}
    assert await again.get("big") == "x" * (INLINE_LIMIT + 1)
    clock.advance(30)  # the expiry time was stored too
    assert await again.get("user:1", namespace="sessions") is None
    await again.disconnect()


async def test_works_without_connect_and_after_disconnect(tmp_path: Path) -> None:
    kv = LocalStorage(tmp_path / "deep" / "kv")
    assert await kv.get("k") is None  # opens (and creates) the store
    assert (tmp_path / "deep" / "kv" / DATABASE_NAME).is_file()
    await kv.set("k", 1)
    await kv.disconnect()
    await kv.disconnect()  # idempotent
    assert not (tmp_path / "deep" / "kv" / (DATABASE_NAME + "-wal")).exists()  # closed cleanly
    assert await kv.get("k") == 1
    await kv.disconnect()


@pytest.mark.parametrize("name", [
    "../escape", "../../escape", "/etc/passwd", "/tmp/escape", "a/../../../escape",
    "..\\..\\escape", ".", "..", "~", "$HOME", "C:\\escape", "nul", "a/b/c",
])
async def test_keys_and_namespaces_cannot_escape_base_path(tmp_path: Path, name: str) -> None:
    base = tmp_path / "root" / "kv"
    kv = LocalStorage(base)
    await kv.set(name, "as key")
    await kv.set("k", "as namespace", namespace=name)
    await kv.set(name, "both", namespace=name)
    assert await kv.get(name) == "as key"
    assert await kv.get("k", namespace=name) == "as namespace"
    assert await kv.get(name, namespace=name) == "both"
    assert await kv.list_keys(namespace=name) == sorted(["k", name])
    assert await kv.delete(name) is True
    assert await kv.clear(namespace=name) is True
    await kv.disconnect()
    assert os.listdir(tmp_path) == ["root"]
    assert os.listdir(tmp_path / "root") == ["kv"]
    assert os.listdir(base) == [DATABASE_NAME]


CRASH_WRITER = """
import asyncio, sys
from lexigram_storage.kv import LocalStorage
BIG = 40_000  # items: ~300 KB of JSON, past the inline limit (the worker thread's path)

async def main():
    kv = LocalStorage(sys.argv[1])
    await kv.connect()
    i = int(sys.argv[2])
    while True:
        i += 1
        await kv.set("big", [i] * BIG)
        await kv.set("small", {"n": i, "check": [i] * 10})
        print("ack", i, flush=True)

asyncio.run(main())
"""


async def test_sigkill_mid_write_leaves_the_old_or_the_new_value(tmp_path: Path) -> None:
    base = tmp_path / "kv"
    last = 0
    for round_ in range(6):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CRASH_WRITER, str(base), str(last),
            stdout=asyncio.subprocess.PIPE, env=_child_env())
        assert child.stdout is not None
        while not (line := await child.stdout.readline()).startswith(b"ack "):  # skip logs
            assert line, "the writer exited"
        acknowledged = [int(line.split()[1])]  # it is writing
        await asyncio.sleep(0.05 + 0.037 * round_)  # vary the moment of the kill
        child.send_signal(signal.SIGKILL)
        out, _ = await child.communicate()
        # whole lines only: the kill may cut the last one short
        acknowledged += [int(n) for n in re.findall(rb"^ack (\d+)\n", out, re.MULTILINE)]
        last = acknowledged[-1]

        with sqlite3.connect(base / DATABASE_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        kv = LocalStorage(base)
        big = await kv.get("big")
        small = await kv.get("small")
        await kv.disconnect()
        # the last acknowledged value, or the next one if it was committed before the kill
        assert big[0] in (last, last + 1), (big[0], last)
        assert big == [big[0]] * 40_000  # never torn
        assert small["n"] in (last, last + 1)
        assert small == {"n": small["n"], "check": [small["n"]] * 10}
        last = max(last, big[0], small["n"])


async def test_concurrent_writers_in_one_process(tmp_path: Path) -> None:
    """Tasks on one store and four stores on one directory write at once: every acknowledged
    write is there."""
    stores = [LocalStorage(tmp_path) for _ in range(4)]
    for kv in stores:
        await kv.connect()

    async def write(kv: LocalStorage, name: str, n: int) -> list[str]:
        done = []
        for i in range(n):
            key = f"{name}:{i}"
            value: Any = {"w": name, "i": i} if i % 10 else "x" * (INLINE_LIMIT + 10)
            assert await kv.set(key, value) is True
            done.append(key)
        return done

    writers = [write(stores[w % 4], f"w{w}", 150) for w in range(16)]
    acknowledged = [key for keys in await asyncio.gather(*writers) for key in keys]
    assert len(acknowledged) == 16 * 150
    for kv in stores:
        await kv.disconnect()
    check = LocalStorage(tmp_path)
    assert sorted(await check.list_keys()) == sorted(acknowledged)
    for key in acknowledged[::37]:
        assert await check.exists(key)
    await check.disconnect()


PROCESS_WRITER = """
import asyncio, os, sys, time
from lexigram_storage.kv import LocalStorage

async def main():
    base, name, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    kv = LocalStorage(base, lock_timeout=30)
    await kv.connect()
    while not os.path.exists(start):  # start together
        time.sleep(0.001)
    for i in range(n):
        await kv.set(f"{name}:{i}", {"writer": name, "i": i})
        await kv.set("shared", {"writer": name, "i": i})
        print("ack", f"{name}:{i}", flush=True)
    await kv.disconnect()

asyncio.run(main())
"""


async def test_concurrent_writers_in_several_processes(tmp_path: Path) -> None:
    base, start = tmp_path / "kv", tmp_path / "start"
    kv = LocalStorage(base)
    await kv.connect()  # the database exists before the writers race
    children = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROCESS_WRITER, str(base), f"p{p}", "300", str(start),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_child_env())
        for p in range(4)]
    start.touch()
    acknowledged: list[str] = []
    for child in children:
        out, err = await asyncio.wait_for(child.communicate(), 120)
        assert child.returncode == 0, err.decode()
        acknowledged += [line.split()[1].decode() for line in out.splitlines()
                         if line.startswith(b"ack ")]
    assert len(acknowledged) == 4 * 300
    keys = await kv.list_keys("p*")
    assert sorted(keys) == sorted(acknowledged)
    for key in acknowledged:
        name, i = key.split(":")
        assert await kv.get(key) == {"writer": name, "i": int(i)}
    shared = await kv.get("shared")
    assert shared["i"] == 299  # the last write of one of the writers
    await kv.disconnect()


async def test_a_waiting_write_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Another connection holds the write lock; set() waits for it in the worker thread while
    the event loop runs the task that releases the lock (a blocked loop would time out)."""
    kv = LocalStorage(tmp_path, lock_timeout=10)
    await kv.connect()
    holder = sqlite3.connect(kv.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO kv VALUES ('', 'held', '1', NULL)")
    write = asyncio.create_task(kv.set("k", "v"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not write.done()  # waiting for the lock
    assert await kv.get("held") is None  # reads do not wait for writers
    assert await kv.get("k") is None
    holder.execute("COMMIT")
    holder.close()
    assert await write is True
    assert await kv.get("k") == "v"
    assert await kv.get("held") == 1
    await kv.disconnect()


async def test_a_write_locked_out_for_longer_than_lock_timeout_fails(tmp_path: Path) -> None:
    kv = LocalStorage(tmp_path, lock_timeout=0.2)
    await kv.connect()
    holder = sqlite3.connect(kv.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageUnavailableError, match="'session:1'") as exc:
            await kv.set("session:1", 1)
        assert "locked" in exc.value.message
        with pytest.raises(StorageUnavailableError):
            await kv.clear()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not await kv.exists("session:1")  # not acknowledged, not stored
    await kv.set("session:1", 2)
    assert await kv.get("session:1") == 2
    await kv.disconnect()


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LEX_LOGGING__LEVEL": "CRITICAL",
            "LEX_QUIET": "1"}
