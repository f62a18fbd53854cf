"""Helpers shared by the test modules: booting applications, and looking at a local root."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lexigram import Application
from lexigram.di.module import Module, module

from lexigram_storage.drivers.local import INTERNAL_DIR


def app_with(*imports: Any, providers: list[Any] | None = None,
             module_providers: list[Any] | None = None, name: str = "storage-test") -> Application:
    """An application whose root module imports *imports* (and registers *module_providers*),
    plus *providers* added to the application directly."""
    @module(imports=list(imports), providers=list(module_providers or []))
    class AppModule(Module):
        pass

    app = Application(name=name)
    app.add_module(AppModule)
    for provider in providers or []:
        app.add_provider(provider)
    return app


@pytest.fixture
async def running() -> AsyncIterator[list[Application]]:
    """Applications started by ``start()``; the ones still running are stopped afterwards."""
    apps: list[Application] = []
    yield apps
    for app in apps:
        if str(app.state) not in ("stopped", "AppState.STOPPED"):
            await app.stop()


async def start(apps: list[Application], app: Application) -> Application:
    await app.start()
    apps.append(app)
    return app


def staging(root: Path) -> list[str]:
    """The temp files left in a local root's staging area."""
    path = root / INTERNAL_DIR / "staging"
    return sorted(os.listdir(path)) if path.exists() else []


def user_files(root: Path) -> list[str]:
    """Every file below a local root, outside the driver's own area, relative to the root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and INTERNAL_DIR in dirnames:
            dirnames.remove(INTERNAL_DIR)
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
    return sorted(out)
