"""The conformance suite over the S3 driver and the R2 profile, against a real moto server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from lexigram_storage.drivers.s3 import R2Driver, S3Driver
from lexigram_storage.testing import DriverConformance
from tests.emulators import S3Settings, create_bucket


class TestS3Conformance(DriverConformance):
    # a small multipart threshold: "large" uploads (and the 3 MiB stream test) go multipart
    large_payload_size = 6 * 1024 * 1024 + 7

    @pytest_asyncio.fixture
    async def store(self, s3_server: S3Settings, unique_name: str) -> AsyncIterator[S3Driver]:
        await create_bucket(s3_server, unique_name)
        async with S3Driver(
            unique_name, region="us-east-1", access_key=s3_server.access_key,
            secret_key=s3_server.secret_key, endpoint_url=s3_server.endpoint_url,
            addressing_style="path", connect_timeout=2, read_timeout=10, max_attempts=2,
            multipart_threshold=5 * 1024 * 1024, name="s3-conformance",
        ) as driver:
            yield driver


class TestR2Conformance(DriverConformance):
    @pytest_asyncio.fixture
    async def store(self, s3_server: S3Settings, unique_name: str) -> AsyncIterator[R2Driver]:
        # moto needs a us-east-1 client (or LocationConstraint "auto") to create the bucket
        await create_bucket(s3_server, unique_name)
        async with R2Driver(
            unique_name, access_key=s3_server.access_key, secret_key=s3_server.secret_key,
            endpoint_url=s3_server.endpoint_url, addressing_style="path", connect_timeout=2,
            read_timeout=10, max_attempts=2, name="r2-conformance",
        ) as driver:
            assert driver.region == "auto"
            yield driver
