"""Running the storage command line as a user does: a subprocess in a working directory that
holds an ``application.yaml``, with the environment of a reader's shell (no ``LEX_*`` settings
of the test suite) and this tree's code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# A framework log line (structlog's console format), on any stream.
LOG_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEX_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lexigram_storage", *args]


def run(cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> Result:
    """Run ``python -m lexigram_storage ARGS`` in *cwd*; no framework log may reach its output."""
    done = subprocess.run(command(*args), cwd=cwd, input=input, capture_output=True,
                          env=env or cli_env(), timeout=timeout)
    result = Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))
    logs = LOG_LINE.findall(result.out.decode(errors="replace")) + LOG_LINE.findall(result.err)
    assert not logs, f"framework logs reached the terminal: {result.out!r} {result.err!r}"
    return result


def ok(cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None
       ) -> Result:
    result = run(cwd, *args, input=input, env=env)
    assert result.code == 0, f"{args}: exit {result.code}\n{result.err}"
    assert result.err == "", result.err
    return result


def write_config(folder: Path, backends: list[dict[str, Any]], **storage: Any) -> Path:
    path = folder / "application.yaml"
    path.write_text(yaml.safe_dump({"storage": {"backends": backends, **storage}}),
                    encoding="utf-8")
    return path


def local_backend(name: str, root: Path, **options: Any) -> dict[str, Any]:
    return {"name": name, "driver": "local", "local": {"root_dir": str(root), **options}}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under *folder* by its relative path (the driver's own area left out)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and ".lexigram" not in p.relative_to(folder).parts}
