"""The conformance suite over the memory driver, over a store that is not a driver, and under
pytest-asyncio's strict mode (BlobStoreCompliance runs in tests/test_compliance.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio
from lexigram.contracts.core.health import HealthCheckResult
from lexigram.contracts.infra.storage import FileInfo

from lexigram_storage import BaseDriver, Capability, DirListing, MemoryDriver
from lexigram_storage.testing import DriverConformance, StoreConformance


class TestMemoryConformance(DriverConformance):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[MemoryDriver]:
        async with MemoryDriver(name="mem-conformance") as driver:
            yield driver


class Wrapper:
    """A store that is no ``BaseDriver``: it has the store API, and nothing else (no name,
    capabilities, events or policy), forwarding every call to a memory driver."""

    def __init__(self, inner: MemoryDriver) -> None:
        self._inner = inner

    async def upload(self, path: str, data: Any, content_type: Any = None,
                     **options: Any) -> FileInfo:
        return await self._inner.upload(path, data, content_type, **options)

    async def download(self, path: str) -> bytes:
        return await self._inner.download(path)

    async def stream(self, path: str, chunk_size: int = 8192, *, offset: int = 0,
                     length: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in self._inner.stream(path, chunk_size, offset=offset, length=length):
            yield chunk

    async def exists(self, path: str) -> bool:
        return await self._inner.exists(path)

    async def info(self, path: str) -> FileInfo:
        return await self._inner.info(path)

    async def list(self, prefix: str = "", *, start_after: str | None = None,
                   limit: int | None = None) -> AsyncIterator[FileInfo]:
        async for info in self._inner.list(prefix, start_after=start_after, limit=limit):
            yield info

    async def list_dir(self, prefix: str = "", delimiter: str = "/") -> DirListing:
        return await self._inner.list_dir(prefix, delimiter)

    async def copy(self, src: str, dst: str) -> FileInfo:
        return await self._inner.copy(src, dst)

    async def move(self, src: str, dst: str) -> FileInfo:
        return await self._inner.move(src, dst)

    async def copy_batch(self, operations: Iterable[tuple[str, str]]) -> list[str]:
        return await self._inner.copy_batch(operations)

    async def delete(self, path: str, missing_ok: bool = False) -> None:
        await self._inner.delete(path, missing_ok)

    async def delete_many(self, paths: Iterable[str]) -> list[str]:
        return await self._inner.delete_many(paths)

    async def clear(self, prefix: str = "") -> int:
        return await self._inner.clear(prefix)

    async def get_url(self, path: str) -> str:
        return await self._inner.get_url(path)

    async def get_presigned_url(self, path: str,
                                expires_in: timedelta | int | float = timedelta(hours=1),
                                method: str = "GET", **options: Any) -> str:
        return await self._inner.get_presigned_url(path, expires_in, method, **options)

    async def health_check(self, timeout: float = 5.0) -> HealthCheckResult:
        return await self._inner.health_check(timeout)


class TestStoreConformanceOverAStoreThatIsNotADriver(StoreConformance):
    # the wrapper declares nothing: the test class says what it can do
    capabilities = frozenset(Capability) - {Capability.PRESIGN_GET, Capability.PRESIGN_PUT}

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[Wrapper]:
        async with MemoryDriver(name="wrapped") as driver:
            wrapper = Wrapper(driver)
            assert not isinstance(wrapper, BaseDriver)
            yield wrapper


STRICT_MODE_MODULE = """\
import pytest_asyncio

from lexigram_storage import MemoryDriver
from lexigram_storage.testing import DriverConformance


class TestInStrictMode(DriverConformance):
    @pytest_asyncio.fixture
    async def store(self):
        async with MemoryDriver() as driver:
            yield driver
"""


def test_the_suite_runs_in_pytest_asyncios_strict_mode(tmp_path: Path) -> None:
    """A project that configures no asyncio mode gets strict mode: the suite marks its own
    tests, so a subclass with no mark of its own runs every one (none skipped)."""
    (tmp_path / "test_strict.py").write_text(STRICT_MODE_MODULE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEX_", "PYTEST_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-o", "asyncio_mode=strict", "test_strict.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.fullmatch(r"\d+ passed(, \d+ warnings?)? in .*", summary), summary
