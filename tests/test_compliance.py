"""lexigram-testing's ``BlobStoreCompliance`` over every driver that exists.

The README says our drivers pass it, so each one runs it: memory, local (on a fresh
directory), S3 and R2 against the moto server, GCS against fake-gcs-server and Azure against
Azurite (a fresh bucket or container per test). The suite asks
``create_store()`` for a ready-to-use, empty store and never closes it, so every driver made
here is closed after its test. Drivers are returned unprepared, as a user would get them from
their constructor: preparing on first use is part of what is checked.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest
from lexigram.testing import BlobStoreCompliance

from lexigram_storage import AzureDriver, GCSDriver, LocalDriver, MemoryDriver, R2Driver, S3Driver
from lexigram_storage.catalogue import BUILTIN
from lexigram_storage.drivers.base import BaseDriver
from tests.azurite_server import AzuriteSettings
from tests.emulators import S3Settings, create_bucket
from tests.gcs_server import GcsSettings

D = TypeVar("D", bound=BaseDriver)


class _Compliance(BlobStoreCompliance):
    """Keeps the drivers a test created and closes them when it ends."""

    _opened: list[BaseDriver]

    @pytest.fixture(autouse=True)
    async def _close_opened_drivers(self) -> AsyncIterator[None]:
        self._opened = []
        yield
        for driver in self._opened:
            await driver.close()

    def _track(self, driver: D) -> D:
        self._opened.append(driver)
        return driver


class TestMemoryCompliance(_Compliance):
    async def create_store(self) -> MemoryDriver:
        return self._track(MemoryDriver(name="compliance-memory"))


class TestLocalCompliance(_Compliance):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"  # not created: the driver makes it on first use

    async def create_store(self) -> LocalDriver:
        return self._track(LocalDriver(self.root, name="compliance-local"))


class _S3Compliance(_Compliance):
    @pytest.fixture(autouse=True)
    async def _bucket(self, s3_server: S3Settings, unique_name: str) -> None:
        await create_bucket(s3_server, unique_name)
        self.s3, self.bucket = s3_server, unique_name


class TestS3Compliance(_S3Compliance):
    async def create_store(self) -> S3Driver:
        return self._track(S3Driver(
            self.bucket, region="us-east-1", access_key=self.s3.access_key,
            secret_key=self.s3.secret_key, endpoint_url=self.s3.endpoint_url,
            addressing_style="path", connect_timeout=2, read_timeout=10, max_attempts=2,
            name="compliance-s3"))


class TestR2Compliance(_S3Compliance):
    async def create_store(self) -> R2Driver:
        return self._track(R2Driver(
            self.bucket, access_key=self.s3.access_key, secret_key=self.s3.secret_key,
            endpoint_url=self.s3.endpoint_url, addressing_style="path", connect_timeout=2,
            read_timeout=10, max_attempts=2, name="compliance-r2"))


class TestGCSCompliance(_Compliance):
    @pytest.fixture(autouse=True)
    def _bucket(self, gcs_server: GcsSettings, gcs_bucket: str) -> None:
        self.gcs, self.bucket = gcs_server, gcs_bucket

    async def create_store(self) -> GCSDriver:
        return self._track(GCSDriver(
            self.bucket, credentials_path=self.gcs.service_file,
            endpoint_url=self.gcs.endpoint_url, connect_timeout=2, read_timeout=10,
            max_attempts=2, name="compliance-gcs"))


class TestAzureCompliance(_Compliance):
    @pytest.fixture(autouse=True)
    def _container(self, azurite: AzuriteSettings, azure_container: str) -> None:
        self.azurite, self.container = azurite, azure_container

    async def create_store(self) -> AzureDriver:
        return self._track(AzureDriver(
            container=self.container, connection_string=self.azurite.connection_string,
            connect_timeout=2, read_timeout=10, max_attempts=2, name="compliance-azure"))


def test_every_existing_driver_runs_the_compliance_suite() -> None:
    """A built-in driver whose module exists but has no compliance class above fails here."""
    covered = {"memory": TestMemoryCompliance, "local": TestLocalCompliance,
               "s3": TestS3Compliance, "r2": TestR2Compliance, "gcs": TestGCSCompliance,
               "azure": TestAzureCompliance}
    existing = {name for name, (target, _extra) in BUILTIN.items()
                if importlib.util.find_spec(target.partition(":")[0]) is not None}
    assert existing == set(covered)
