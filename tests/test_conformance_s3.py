"""The conformance suite over the S3 driver and the R2 profile, on real S3 servers.

SeaweedFS always (tests/servers.py starts it), Ceph RADOS Gateway when Ceph is installed (else
those classes are skipped, naming the apt-get command). The S3 driver runs it on both of its
request paths: direct requests for single objects (the default) and aioboto3 for every request
(``direct_requests=False``). moto, a mock that checks no signature,
expiry or checksum, is kept for fault injection (tests/test_s3.py), not for conformance.

Each test gets a fresh bucket, removed afterwards. The drivers use the smallest multipart
settings S3 allows (5 MiB), so the suite's large uploads (11 MiB) have three parts, and
``pending_uploads`` asks the server for unfinished multipart uploads after each of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from lexigram_storage import Capability
from lexigram_storage.drivers.s3 import R2Driver, S3Driver
from lexigram_storage.testing import DriverConformance
from tests.emulators import S3Settings, create_bucket, s3_client_for

MiB = 1024 * 1024

SEAWEEDFS_GAPS: Mapping[Capability, str] = {
    Capability.LONG_SEGMENTS:
        "SeaweedFS refuses a key segment over 255 bytes (KeyTooLongError)",
    Capability.BYTE_ORDER_LISTING:
        "SeaweedFS lists a directory's entries name by name ('a/a' before 'a b') and a "
        "StartAfter naming a directory skips the keys in it; S3 lists in byte order",
}

# The etag of a streamed multipart upload is recorded by copying the object onto itself,
# guarded by the ETag CompleteMultipartUpload returned, so that a concurrent writer's object
# is never relabelled. Ceph RGW 16 returns an empty ETag there and ignores the standard
# x-amz-copy-source-if-match (it reads x-amz-copy-if-match), so the guard cannot hold.
RGW_GAPS: Mapping[Capability, str] = {
    Capability.RACE_SAFE_ETAG:
        "Ceph RGW 16 ignores x-amz-copy-source-if-match and returns no CompleteMultipartUpload "
        "ETag: the copy recording a streamed upload's SHA-256 cannot be guarded against a "
        "concurrent writer",
}


async def remove_bucket(server: S3Settings, bucket: str) -> None:
    """Abort the bucket's unfinished multipart uploads, delete its objects, then the bucket."""
    async with s3_client_for(server) as client:
        uploads = await client.list_multipart_uploads(Bucket=bucket)
        for upload in uploads.get("Uploads") or []:
            with contextlib.suppress(Exception):  # gone meanwhile
                await client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                    UploadId=upload["UploadId"])
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents") or []]
            if keys:
                await client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        await client.delete_bucket(Bucket=bucket)


class _OnServer(DriverConformance):
    """The suite over ``driver_class`` on the server of the session fixture named ``server``."""

    driver_class: ClassVar[type[S3Driver]]
    server: ClassVar[str]
    #: single-object requests over the driver's own session (else all through aioboto3)
    direct_requests: ClassVar[bool] = True
    large_payload_size = 11 * MiB + 7

    @pytest_asyncio.fixture
    async def store(self, request: pytest.FixtureRequest, unique_name: str
                    ) -> AsyncIterator[S3Driver]:
        settings: S3Settings = request.getfixturevalue(self.server)
        self.settings = settings
        await create_bucket(settings, unique_name)
        # R2 keeps its own region ("auto"); S3 takes the server's
        kwargs: dict[str, Any] = ({} if self.driver_class is R2Driver
                                  else {"region": settings.region})
        async with self.driver_class(
            unique_name, access_key=settings.access_key, secret_key=settings.secret_key,
            endpoint_url=settings.endpoint_url, addressing_style="path", connect_timeout=2,
            read_timeout=10, max_attempts=2, multipart_threshold=5 * MiB,
            multipart_chunk_size=5 * MiB, name=f"{self.driver_class.driver}-conformance",
            direct_requests=self.direct_requests, **kwargs,
        ) as driver:
            await driver.prepare()
            assert (driver._direct is not None) is self.direct_requests  # the path under test
            yield driver
        await remove_bucket(settings, unique_name)

    async def pending_uploads(self, store: S3Driver) -> int:
        async with s3_client_for(self.settings) as client:
            uploads = await client.list_multipart_uploads(Bucket=store.bucket)
        return len(uploads.get("Uploads") or [])


class TestS3OnSeaweedFS(_OnServer):
    driver_class = S3Driver
    server = "seaweedfs_server"
    server_gaps = SEAWEEDFS_GAPS


class TestS3Aioboto3OnSeaweedFS(_OnServer):
    driver_class = S3Driver
    server = "seaweedfs_server"
    server_gaps = SEAWEEDFS_GAPS
    direct_requests = False


class TestR2OnSeaweedFS(_OnServer):
    driver_class = R2Driver
    server = "seaweedfs_server"
    server_gaps = SEAWEEDFS_GAPS


class TestS3OnCephRGW(_OnServer):
    driver_class = S3Driver
    server = "rgw_server"
    server_gaps = RGW_GAPS


class TestS3Aioboto3OnCephRGW(_OnServer):
    driver_class = S3Driver
    server = "rgw_server"
    server_gaps = RGW_GAPS
    direct_requests = False


class TestR2OnCephRGW(_OnServer):
    driver_class = R2Driver
    server = "rgw_server"
    server_gaps = RGW_GAPS
