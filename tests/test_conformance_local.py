"""The conformance suite over the local filesystem driver (with and without extended attributes).

Both classes run in the native and the portable mode (see tests/conftest.py); the sidecar class
only natively, as the portable mode already keeps metadata in sidecars."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lexigram_storage.drivers.local import LocalDriver
from lexigram_storage.testing import DriverConformance
from tests.support import staging


class TestLocalConformance(DriverConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[LocalDriver]:
        async with LocalDriver(tmp_path / "root", signing_key="conformance-key",
                               name="local-conformance") as driver:
            yield driver

    async def pending_uploads(self, store: LocalDriver) -> int:
        return len(staging(store.root))  # temp files left behind


@pytest.mark.local_modes("native")
class TestLocalSidecarConformance(DriverConformance):
    """Filesystems without user xattrs keep metadata in sidecar files."""

    # no signing_key: this driver signs no URLs (its capabilities say so; the suite checks
    # that it refuses to)

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[LocalDriver]:
        driver = LocalDriver(tmp_path / "root", name="local-sidecar")
        driver._meta.xattrs = False
        async with driver:
            yield driver

    async def pending_uploads(self, store: LocalDriver) -> int:
        return len(staging(store.root))
