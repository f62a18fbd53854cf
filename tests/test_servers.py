"""The real S3 servers of tests/servers.py: their credentials are enforced, and their fault
injection works (a paused server answers nothing; resumed or restarted, it has its objects)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from lexigram_storage import S3Driver, StorageUnavailableError
from tests.emulators import S3Settings, s3_client_for


@pytest.fixture(params=["seaweedfs_server", "rgw_server"])
def server(request: pytest.FixtureRequest) -> S3Settings:
    settings: S3Settings = request.getfixturevalue(request.param)
    return settings


async def test_wrong_secret_is_refused(server: S3Settings, unique_name: str) -> None:
    async with s3_client_for(server) as client:
        await client.create_bucket(Bucket=unique_name)
    wrong = S3Settings(endpoint_url=server.endpoint_url, access_key=server.access_key,
                       secret_key="not-the-secret")
    async with s3_client_for(wrong) as client:
        with pytest.raises(ClientError) as exc:
            await client.put_object(Bucket=unique_name, Key="k", Body=b"x")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    async with s3_client_for(server) as client:
        await client.delete_bucket(Bucket=unique_name)


async def test_pause_resume_and_restart(server: S3Settings, unique_name: str) -> None:
    emulator = server.emulator
    assert emulator is not None
    async with s3_client_for(server) as client:
        await client.create_bucket(Bucket=unique_name)
        await client.put_object(Bucket=unique_name, Key="k", Body=b"kept")
    driver = S3Driver(unique_name, region=server.region, access_key=server.access_key,
                      secret_key=server.secret_key, endpoint_url=server.endpoint_url,
                      addressing_style="path", connect_timeout=1, read_timeout=1, max_attempts=1)
    async with driver:
        emulator.pause()
        try:
            with pytest.raises(StorageUnavailableError):
                await driver.download("k")
        finally:
            emulator.resume()
        assert await driver.download("k") == b"kept"
    emulator.restart()
    async with s3_client_for(server) as client:
        response = await client.get_object(Bucket=unique_name, Key="k")
        assert await response["Body"].read() == b"kept"
        await client.delete_object(Bucket=unique_name, Key="k")
        await client.delete_bucket(Bucket=unique_name)
