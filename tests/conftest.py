"""Shared pytest set-up. Server fixtures live in tests/emulators.py (moto) and tests/servers.py
(SeaweedFS, Ceph RGW).

Every test in ``tests/test_local*.py`` and ``tests/test_conformance_local.py`` runs twice:
``[native]`` with the platform's own pieces (on Linux: ``/proc/self/fd``, ``O_TMPFILE``,
user xattrs, ``openat2``/``preadv2``) and ``[portable]`` with ``LEX_STORAGE_LOCAL_PORTABLE=1``,
which makes every LocalDriver built during the test use only the portable ones (the walk that
refuses symlinks, named temp files, sidecar metadata): the code path of other platforms.
A test or class marked ``@pytest.mark.local_modes("native")`` runs in the listed modes only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lexigram_storage.drivers.local.platforms import PORTABLE_ENV

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")

# fixtures: moto (tests/emulators.py), real S3 servers (tests/servers.py), fake-gcs-server
# (tests/gcs_server.py), Azurite (tests/azurite_server.py), `running` apps
pytest_plugins = ["tests.emulators", "tests.servers", "tests.gcs_server", "tests.azurite_server",
                  "tests.support"]

LOCAL_MODES = ("native", "portable")

def _runs_local_modes(path: Path) -> bool:
    return path.name.startswith("test_local") or path.name == "test_conformance_local.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "local_modes(*modes): run this local-driver test only in these modes "
                   "(native, portable)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "local_mode" not in metafunc.fixturenames or not _runs_local_modes(metafunc.definition.path):
        return
    marker = metafunc.definition.get_closest_marker("local_modes")
    modes = marker.args if marker is not None else LOCAL_MODES
    metafunc.parametrize("local_mode", modes, indirect=True)


@pytest.fixture(autouse=True)
def local_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The local driver's mode for this test (``None`` outside the local-driver test files)."""
    mode: str | None = getattr(request, "param", None)
    if mode == "portable":
        monkeypatch.setenv(PORTABLE_ENV, "1")
    elif mode == "native":
        monkeypatch.delenv(PORTABLE_ENV, raising=False)
    return mode
