"""lexigram_storage in the lexigram ecosystem: its entry points, ``lexigram storage ...`` and
``lexigram system doctor`` through lexigram-cli, and the contributor's checks.

The subprocesses see this tree's entry points, whatever the installed metadata says (an
editable install keeps the entry points of the pyproject.toml it was installed from): a
``lexigram_storage-*.dist-info`` written from pyproject.toml is put on ``PYTHONPATH``, ahead of
site-packages, and importlib.metadata takes the first distribution of a name it finds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from lexigram import Application
from lexigram.contracts.core.health import HealthStatus
from lexigram.contracts.infra.storage import BlobStoreProtocol
from lexigram.di.module import Module, module

from lexigram_storage import NamedStorageConfig, StorageConfig, StorageLocalConfig, StorageModule
from lexigram_storage.cli.contributor import (
    StorageCliContributor,
    doctor_check,
    health_check,
    shell_store,
)
from tests.cli_support import ROOT, cli_env, local_backend, write_config

LEXIGRAM = Path(sys.executable).parent / "lexigram"
needs_lexigram_cli = pytest.mark.skipif(
    not LEXIGRAM.exists(), reason='lexigram-cli is not installed: pip install -e ".[test]"')


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a shell in which this tree is installed (its entry points)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dist = tmp_path_factory.mktemp("meta") / f"lexigram_storage-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = {"console_scripts": project["scripts"], **project["entry-points"]}
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items()) + "\n"
        for group, eps in groups.items()))
    return cli_env(PYTHONPATH=f"{ROOT}{os.pathsep}{dist.parent}")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    write_config(folder, [local_backend("files", tmp_path / "files")])
    return folder


def python(env: dict[str, str], code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def lexigram(cwd: Path, env: dict[str, str], *args: str, input: bytes | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(LEXIGRAM), *args], cwd=cwd, env=env, input=input,
                          capture_output=True, timeout=120)


def test_the_entry_points_load_the_module_config_and_contributor(env: dict[str, str]) -> None:
    loaded = json.loads(python(env, """\
import json
from lexigram.logging import configure_logging
configure_logging(level="CRITICAL")  # StorageModule's import logs (lexigram's @module)
from importlib.metadata import entry_points
print(json.dumps({group: {ep.name: ep.load().__qualname__ for ep in entry_points(group=group)
                          if ep.value.startswith("lexigram_storage")}
                  for group in ("lexigram.modules", "lexigram.config",
                                "lexigram.cli.contributors", "console_scripts")}))
"""))
    assert loaded == {"lexigram.modules": {"storage": "StorageModule"},
                      "lexigram.config": {"storage": "StorageConfig"},
                      "lexigram.cli.contributors": {"storage": "StorageCliContributor"},
                      "console_scripts": {"lexigram-storage": "main"}}


@needs_lexigram_cli
def test_lexigram_cli_discovers_the_contributor(env: dict[str, str]) -> None:
    found = json.loads(python(env, """\
import json
from lexigram.cli.contributors.runtime import ContributorRuntime
runtime = ContributorRuntime.from_entry_points()
print(json.dumps({"contributors": [c.contributor_id for c in runtime.contributors],
                  "errors": list(runtime.errors),
                  "commands": [c.name for c in runtime.commands if c.contributor == "storage"],
                  "doctor": [c.name for c in runtime.doctor_checks if c.contributor == "storage"]}))
"""))
    assert "storage" in found["contributors"] and "storage" not in found["errors"]
    assert found["commands"] == ["storage"] and found["doctor"] == ["storage"]


@needs_lexigram_cli
def test_lexigram_storage_runs_the_commands(work: Path, tmp_path: Path, env: dict[str, str]
                                            ) -> None:
    assert b"sync" in lexigram(work, env, "storage", "--help").stdout
    put = lexigram(work, env, "storage", "put", "-", "files:a/b.txt", input=b"hello")
    assert (put.returncode, put.stdout, put.stderr) == (0, b"put - -> files:a/b.txt\n", b"")
    listed = lexigram(work, env, "storage", "ls", "-r", "files:")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, b"a/b.txt\n", b"")
    rows = json.loads(lexigram(work, env, "storage", "backends", "--json").stdout)
    assert [(r["name"], r["status"]) for r in rows] == [("files", "healthy")]
    # lexigram's own --config and --debug, given before `storage`, count too
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = lexigram(elsewhere, env, "--config", str(work / "application.yaml"), "--debug",
                     "storage", "cat", "files:missing")
    assert shown.returncode == 1
    assert b"Traceback" in shown.stderr
    assert shown.stderr.endswith(b"error: files: object not found (key 'missing')\n")
    assert shown.stdout == b""


def _doctor_lines(output: bytes) -> list[str]:
    return [line.strip() for line in output.decode().splitlines()
            if re.match(r"^\s+\S storage\b", line)]


@needs_lexigram_cli
def test_lexigram_system_doctor_runs_the_storage_check(work: Path, tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    # lexigram-cli 0.1.5009 prints each contributed check's name with the message of the
    # check before it, and its summary fails on checks that return dicts (lexigram-events'),
    # so only the storage line and its mark are checked here.
    passed = lexigram(work, env, "system", "doctor")
    assert [line[:9] for line in _doctor_lines(passed.stdout)] == ["✓ storage"]
    (tmp_path / "blocker").write_text("not a folder")
    write_config(work, [local_backend("broken", tmp_path / "blocker" / "root")])
    failed = lexigram(work, env, "system", "doctor")
    assert [line[:9] for line in _doctor_lines(failed.stdout)] == ["✗ storage"]
    assert not re.search(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", failed.stdout, re.MULTILINE)


# ---------------------------------------------------------------------- the checks themselves


@pytest.fixture
def in_work(work: Path) -> Iterator[Path]:
    before = Path.cwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(before)


@needs_lexigram_cli
def test_doctor_check_validates_and_probes_every_backend(in_work: Path, tmp_path: Path) -> None:
    from lexigram.cli.registry.health import CheckStatus

    result = doctor_check()
    assert result.status == CheckStatus.PASS
    assert [c["name"] for c in result.details["checks"]] == ["configuration", "backend files"]
    (tmp_path / "blocker").write_text("not a folder")
    write_config(in_work, [local_backend("files", tmp_path / "files"),
                           local_backend("broken", tmp_path / "blocker" / "root")])
    result = doctor_check()
    assert result.status == CheckStatus.FAIL
    assert result.message.startswith("backend broken: local ")
    write_config(in_work, [{"name": "x", "driver": "nosuch"}])
    result = doctor_check()
    assert result.status == CheckStatus.FAIL
    assert result.message.startswith("configuration: invalid 'storage' configuration")


async def test_health_check_and_shell_context_on_a_booted_application(tmp_path: Path) -> None:
    config = StorageConfig(backends=[
        NamedStorageConfig(name="docs", driver="local",
                           local=StorageLocalConfig(root_dir=str(tmp_path / "docs")))])

    @module(imports=[StorageModule.configure(config)])
    class AppModule(Module): ...

    async with Application.boot(name="cli-test", modules=[AppModule]) as app:
        result = await health_check(app.container)
        assert (result.component, result.status) == ("storage", HealthStatus.HEALTHY)
        assert result.details is not None and result.details["backends"]["docs"]["status"] == "healthy"
        store = await shell_store(app.container)
        assert store is await app.container.resolve(BlobStoreProtocol)

    async with Application.boot(name="no-storage", modules=[]) as bare:
        result = await health_check(bare.container)
        assert result.status == HealthStatus.UNKNOWN


def test_the_contributor_declares_commands_and_checks() -> None:
    contributor = StorageCliContributor()
    assert contributor.contributor_id == "storage"
    (command,) = contributor.get_commands()
    assert command.app_factory_path == "lexigram_storage.cli.app:create_app"
    assert [c.check_path for c in contributor.get_doctor_checks()] == \
        ["lexigram_storage.cli.contributor:doctor_check"]
    assert [c.check_path for c in contributor.get_health_checks()] == \
        ["lexigram_storage.cli.contributor:health_check"]
    assert contributor.get_generators() == [] and contributor.get_hooks() == []
