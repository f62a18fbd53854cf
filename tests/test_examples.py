"""The README's main job runs on a clean directory and leaves it as it found it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"


def quickstart(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the example as a user would: no test settings, the worktree's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEX_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, str(QUICKSTART)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def run_quickstart(cwd: Path) -> str:
    result = quickstart(cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under directory: file contents, None for a folder."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def test_quickstart_runs_on_the_local_default(tmp_path: Path) -> None:
    out = run_quickstart(tmp_path)
    assert "backend: <LocalDriver name='local'" in out
    assert "download: b'month,revenue\\n2026-11,1200\\n'" in out
    assert "verified key:  reports/2026-11.csv" in out
    assert "exists after delete: False" in out
    events = out.split("events published:\n", 1)[1].splitlines()
    assert sorted(line.split()[0] for line in events) == [
        "FileDeletedEvent", "FileDeletedEvent", "FileDownloadedEvent", "FileDownloadedEvent",
        "FileUploadedEvent", "FileUploadedEvent"]
    assert not any(line[:4].isdigit() for line in out.splitlines()), "framework logs printed"


def test_quickstart_removes_everything_it_created(tmp_path: Path) -> None:
    run_quickstart(tmp_path)
    assert tree(tmp_path) == {}  # no ./storage, no ./storage/.lexigram/staging


def test_quickstart_keeps_what_storage_held_before(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    (storage / "reports").mkdir(parents=True)
    (storage / "reports" / "2026-10.csv").write_bytes(b"month,revenue\n2026-10,900\n")
    (storage / "empty-folder").mkdir()
    (storage / ".lexigram" / "staging").mkdir(parents=True)  # a previous run's driver area
    before = tree(tmp_path)
    run_quickstart(tmp_path)
    assert tree(tmp_path) == before


def test_quickstart_never_overwrites_an_object_it_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "storage" / "reports" / "2026-11.csv"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own report\n")
    before = tree(tmp_path)
    result = quickstart(tmp_path)
    assert result.returncode == 1
    assert "the store already holds 'reports/2026-11.csv'" in result.stderr
    assert tree(tmp_path) == before
