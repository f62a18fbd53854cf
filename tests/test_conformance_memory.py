"""The conformance suite over the memory driver (BlobStoreCompliance runs in tests/test_compliance.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from lexigram_storage import MemoryDriver
from lexigram_storage.testing import DriverConformance


class TestMemoryConformance(DriverConformance):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[MemoryDriver]:
        async with MemoryDriver(name="mem-conformance") as driver:
            yield driver
