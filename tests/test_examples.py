"""The README's main job runs on a clean directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_on_the_local_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEX_STORAGE__")}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "backend: <LocalDriver name='local'" in out
    assert "download: b'month,revenue\\n2026-11,1200\\n'" in out
    assert "verified key:  reports/2026-11.csv" in out
    assert "exists after delete: False" in out
    events = out.split("events published:\n", 1)[1].splitlines()
    assert sorted(line.split()[0] for line in events) == [
        "FileDeletedEvent", "FileDeletedEvent", "FileDownloadedEvent", "FileDownloadedEvent",
        "FileUploadedEvent", "FileUploadedEvent"]
    assert (tmp_path / "storage").is_dir()  # created at boot, left empty by the tour
    assert not [p for p in (tmp_path / "storage").rglob("*") if p.is_file()
                and ".lexigram" not in p.parts]
