"""Every code block in README.md runs as written, and the package surface it documents exists.

Each fenced block is one test case, named by its language and line number:

- ``python``: run as a script in a fresh directory (a subprocess; top-level ``await`` is
  allowed, as in ``python -m asyncio``); a block that calls ``configure_logging`` must print no
  framework log line. A block that defines a ``Test...`` class is a pytest
  module: it is run by pytest under pytest-asyncio's *strict* mode, the mode a project gets
  without configuring one. A ``print(...)  # -> text`` line claims that ``text`` is printed:
  the printed lines must contain these claims in order.
- ``yaml``: parses; a ``storage:`` section validates as ``StorageConfig``.
- ``toml``: parses with ``tomllib``.
- ``bash``: the two set-up commands; the test command is exactly the one ``.ci/run`` runs.
- ``console``: a terminal session. Each ``$ command`` line runs in bash, in a fresh directory
  holding the README's nearest ``yaml`` block above it as ``application.yaml``, with
  ``lexigram-storage`` on the ``PATH`` (this tree's ``python -m lexigram_storage``); what it
  prints (stdout and stderr) must be the lines below it, where ``...`` stands for any text
  (runs of spaces count as one: columns).
- ``text``: output or listings, never run. A fence without a language fails: mark it.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lexigram_storage import StorageConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Framework log lines (structlog's console format) on stdout.
LOG_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
CLAIM = re.compile(r"^\s*print\(.*\)\s*# -> (?P<text>.+)$")

# Runs a README block like a script, allowing top-level await.
RUNNER = """\
import ast, asyncio, sys, types
path, first_line = sys.argv[1], int(sys.argv[2])
source = "\\n" * first_line + open(path, encoding="utf-8").read()
code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
main = types.ModuleType("__main__")
sys.modules["__main__"] = main
result = eval(code, main.__dict__)
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Block:
    line: int  # line of the opening fence
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.lang or 'unmarked'}-line{self.line}"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[i])
        if opening is None:
            i += 1
            continue
        start = i
        i += 1
        while not lines[i].startswith("```"):
            i += 1
        blocks.append(Block(start + 1, opening.group(1), "\n".join(lines[start + 1:i]) + "\n"))
        i += 1
    return blocks


BLOCKS = readme_blocks()


def by_lang(*langs: str) -> list[object]:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.lang in langs]


def snippet_env() -> dict[str, str]:
    """The environment of a reader's shell: no test-suite settings, the worktree's code."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LEX_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_every_block_is_marked_with_a_known_language() -> None:
    assert BLOCKS, "no code blocks found in README.md"
    unknown = [b.id for b in BLOCKS
               if b.lang not in {"python", "yaml", "toml", "bash", "console", "text"}]
    assert not unknown, f"mark these README blocks (```text for output): {unknown}"


@pytest.mark.parametrize("block", by_lang("python"))
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    ast.parse(block.code, filename="README.md")  # a syntax error is reported as such
    if re.search(r"^class Test\w*\(", block.code, re.MULTILINE):
        run_as_pytest_module(block, tmp_path)
        return
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(script), str(block.line)],
        cwd=work, env=snippet_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"README block at line {block.line} failed:\n{result.stderr}"
    printed = result.stdout.splitlines()
    if "configure_logging(" in block.code:  # it says how to quiet the logs: it must be quiet
        logs = [line for line in printed if LOG_LINE.match(line)]
        assert not logs, f"README block at line {block.line} printed framework logs: {logs}"
    printed = [line for line in printed if not LOG_LINE.match(line)]
    claims = [m.group("text").strip() for m in map(CLAIM.match, block.code.splitlines()) if m]
    remaining = iter(printed)
    for claim in claims:
        assert any(claim in line for line in remaining), (
            f"README block at line {block.line} claims it prints {claim!r}; it printed:\n"
            + result.stdout)


def run_as_pytest_module(block: Block, tmp_path: Path) -> None:
    (tmp_path / "test_readme_block.py").write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
         "-o", "asyncio_mode=strict", "test_readme_block.py"],
        cwd=tmp_path, env=snippet_env(), capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, (
        f"README block at line {block.line} under pytest (strict asyncio mode): {summary}\n"
        + result.stdout[-6000:] + result.stderr[-2000:])
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary


@pytest.mark.parametrize("block", by_lang("console"))
def test_console_session_prints_what_it_shows(block: Block, tmp_path: Path) -> None:
    config = [b for b in BLOCKS if b.lang == "yaml" and b.line < block.line][-1]
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "application.yaml").write_text(config.code, encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "lexigram-storage"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lexigram_storage "$@"\n')
    script.chmod(0o755)
    env = snippet_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    for command, expected in steps:
        done = subprocess.run(["bash", "-c", command], cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120)
        printed = [" ".join(line.split()) for line in done.stdout.splitlines()]  # columns
        patterns = [re.compile(".*".join(map(re.escape, " ".join(line.split()).split("..."))))
                    for line in expected]
        assert len(printed) == len(patterns) and all(
            p.fullmatch(line) for p, line in zip(patterns, printed, strict=True)), (
            f"README line {block.line}: `{command}` printed:\n{done.stdout}\nexpected:\n"
            + "\n".join(expected))


@pytest.mark.parametrize("block", by_lang("yaml"))
def test_yaml_block_is_a_valid_storage_section(block: Block) -> None:
    data = yaml.safe_load(block.code)
    assert isinstance(data, dict)
    assert "storage" in data, "README yaml blocks show an application.yaml storage: section"
    StorageConfig(**data["storage"])


@pytest.mark.parametrize("block", by_lang("toml"))
def test_toml_block_parses(block: Block) -> None:
    tomllib.loads(block.code)


def ci_test_command() -> str:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in lines if "pytest" in line and not line.startswith("#")]
    assert len(commands) == 1, f".ci/run should run pytest once: {commands}"
    return commands[0]


@pytest.mark.parametrize("block", by_lang("bash"))
def test_bash_block_is_one_of_the_two_set_up_commands(block: Block) -> None:
    command = block.code.strip()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    for extra in re.findall(r'"\.\[(\w+)\]"', command):
        assert extra in extras, f"README installs the unknown extra {extra!r}"
    if command.endswith("pytest -q"):
        assert command == ci_test_command(), ".ci/run must run the README's test command"
    else:
        script = command.rsplit(" ", 1)[-1]
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -e ")
        assert (ROOT / script).is_file(), f"README runs {script}, which does not exist"


def test_readme_shows_both_set_up_commands() -> None:
    commands = [b.code.strip() for b in BLOCKS if b.lang == "bash"]
    assert len(commands) == 2
    assert ci_test_command() in commands


# ------------------------------------------------------------------ the package surface


def test_every_driver_is_importable_from_the_package() -> None:
    import lexigram_storage
    from lexigram_storage import (
        AzureDriver,
        GCSDriver,
        LocalDriver,
        MemoryDriver,
        R2Driver,
        S3Driver,
    )
    from lexigram_storage.drivers.azure import AzureDriver as azure_cls
    from lexigram_storage.drivers.gcs import GCSDriver as gcs_cls
    from lexigram_storage.drivers.local import LocalDriver as local_cls
    from lexigram_storage.drivers.memory import MemoryDriver as memory_cls
    from lexigram_storage.drivers.s3 import R2Driver as r2_cls
    from lexigram_storage.drivers.s3 import S3Driver as s3_cls

    assert (LocalDriver, MemoryDriver, S3Driver, R2Driver, GCSDriver, AzureDriver) == \
        (local_cls, memory_cls, s3_cls, r2_cls, gcs_cls, azure_cls)
    assert {"LocalDriver", "MemoryDriver", "S3Driver", "R2Driver", "GCSDriver", "AzureDriver"} <= \
        set(dir(lexigram_storage))


MISSING_SDK = """\
import sys
sys.modules["aioboto3"] = None  # as if the s3 extra were not installed
import lexigram_storage
from lexigram_storage import *  # noqa: F403  (needs no optional SDK)
from lexigram_storage import LocalDriver, MemoryDriver
assert "S3Driver" in dir(lexigram_storage)
try:
    from lexigram_storage import S3Driver
except ImportError as exc:
    print("ImportError:", exc)
from lexigram_storage import DriverRegistry, NamedStorageConfig, StorageS3Config
try:
    DriverRegistry().create(NamedStorageConfig(name="files", driver="s3",
                                               s3=StorageS3Config(bucket="b")))
except Exception as exc:
    print(type(exc).__name__ + ":", exc.message, "|", exc.hint)
"""


def test_a_driver_without_its_sdk_names_the_extra_to_install() -> None:
    result = subprocess.run([sys.executable, "-c", MISSING_SDK], env=snippet_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not LOG_LINE.match(line)]
    assert lines == [
        'ImportError: The s3/r2 drivers need aioboto3: pip install "lexigram_storage[s3]"',
        "StorageConfigurationError: driver 's3' needs an optional dependency that is not "
        'installed (aioboto3) | pip install "lexigram_storage[s3]"',
    ]
