"""Helpers shared by the benchmarks: the reference virtualenv and peak-RSS measurement."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REF_VENV = HERE / ".venv-ref"
REF_PACKAGES = ("lexigram-storage==0.1.5009", "obstore")
MiB = 1024 * 1024


def ref_python() -> Path:
    """The Python of ``bench/.venv-ref`` (the existing package and obstore), created if needed."""
    python = REF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(REF_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import lexigram.storage, obstore"],
                           capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REF_PACKAGES], check=True)
    return python


def _status(field: str) -> int:
    """A ``/proc/self/status`` value in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak resident memory above the idle process while the block runs (Linux).

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) on entry and
    reads ``VmHWM`` on exit.
    """

    def __enter__(self) -> PeakRSS:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.idle = _status("VmRSS")
        self.above = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.above = _status("VmHWM") - self.idle
