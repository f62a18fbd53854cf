"""The conformance suite and lexigram-testing's BlobStoreCompliance over the memory driver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from lexigram.testing import BlobStoreCompliance

from lexigram_storage import MemoryDriver
from lexigram_storage.testing import DriverConformance


class TestMemoryConformance(DriverConformance):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[MemoryDriver]:
        async with MemoryDriver(name="mem-conformance") as driver:
            yield driver


class TestMemoryBlobStoreCompliance(BlobStoreCompliance):
    async def create_store(self) -> MemoryDriver:
        return MemoryDriver(name="compliance")
