"""The conformance suite over the GCS driver, against a real fake-gcs-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from lexigram_storage import Capability
from lexigram_storage.drivers.gcs import GCSDriver
from lexigram_storage.testing import DriverConformance
from tests.gcs_server import GcsSettings


class TestGCSConformance(DriverConformance):
    """Resumable uploads from 64 KiB in 256 KiB chunks, so the round trips and the "large"
    uploads take the resumable path and the small ones the single request. fake-gcs-server
    honours every check of the suite but one (its create-only races use single requests, which
    it checks)."""

    large_payload_size = 1024 * 1024 + 7
    server_gaps = {
        Capability.RACE_SAFE_ETAG:
            "fake-gcs-server ignores ifGenerationMatch on a metadata PATCH (a wrong generation "
            "gets 200), so the patch recording a streamed upload's SHA-256 is not guarded "
            "against a concurrent writer there; GCS enforces it",
    }

    @pytest_asyncio.fixture
    async def store(self, gcs_server: GcsSettings, gcs_bucket: str) -> AsyncIterator[GCSDriver]:
        async with GCSDriver(
            gcs_bucket, credentials_path=gcs_server.service_file,
            endpoint_url=gcs_server.endpoint_url, resumable_threshold=64 * 1024,
            chunk_size=256 * 1024, connect_timeout=2, read_timeout=10, max_attempts=2,
            name="gcs-conformance",
        ) as driver:
            yield driver
