"""The conformance suite over the Azure driver, against a real Azurite server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from lexigram_storage.drivers.azure import AzureDriver
from lexigram_storage.testing import DriverConformance
from tests.azurite_server import AzuriteSettings

MiB = 1024 * 1024


class TestAzureConformance(DriverConformance):
    """Every check of the suite runs as it is: Azurite honours all of them."""

    # 1 MiB blocks from 1 MiB on: the "large" uploads (and the 3 MiB stream test) are staged
    large_payload_size = 3 * MiB + 7

    @pytest_asyncio.fixture
    async def store(self, azurite: AzuriteSettings, azure_container: str
                    ) -> AsyncIterator[AzureDriver]:
        async with AzureDriver(
            container=azure_container, connection_string=azurite.connection_string,
            connect_timeout=2, read_timeout=10, max_attempts=2, block_upload_threshold=MiB,
            block_size=MiB, name="azure-conformance",
        ) as driver:
            yield driver
