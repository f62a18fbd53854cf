"""Shared pytest set-up. Emulator server fixtures live in tests/emulators.py."""

from __future__ import annotations

import os

os.environ.setdefault("LEX_LOGGING__LEVEL", "CRITICAL")
os.environ.setdefault("LEX_QUIET", "1")

pytest_plugins = ["tests.emulators"]
