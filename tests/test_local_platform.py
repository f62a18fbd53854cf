"""LocalDriver on every platform: path confinement per strategy, the portable switch, sidecar
metadata under concurrency, first use from many threads, and hostile presigned URLs.

The macOS strategy (``fcntl(F_GETPATH)``) cannot run on Linux. It differs from Linux's only in
the call that tells where an fd lies, so it is tested here as "fd-path only": Linux's
``/proc/self/fd`` as that call, and none of Linux's extras (``O_TMPFILE``, xattrs, cached reads),
exactly the code path a Mac runs; the shared check of the real path is tested on its own with a
stand-in for the call. The portable walk runs for real."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from lexigram_storage.drivers import local
from lexigram_storage.drivers.local import INTERNAL_DIR, LocalDriver
from lexigram_storage.errors import StoragePermissionError

# ---------------------------------------------------------------------------- first use


@pytest.mark.local_modes("native")
async def test_first_use_from_many_threads_prepares_once(tmp_path: Path) -> None:
    """Concurrent uploads to a never-prepared driver, every worker thread starting at once:
    1,500 uploads in 30 rounds (before: 20-35 of 1,500 failed with StorageBootError "File exists
    (.../<pid>-<hex>-probe)": each thread prepared the driver, with the same probe file)."""
    pool = local._pool()
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
