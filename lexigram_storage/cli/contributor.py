"""The lexigram-cli contributor (entry point group ``lexigram.cli.contributors``).

lexigram-cli discovers it and mounts the storage commands as ``lexigram storage ...``; its
``lexigram system doctor`` runs ``doctor_check``. ``health_check`` (a booted application's
container -> the storage component) and the shell context ``storage`` (the default backend)
follow the contracts of ``lexigram.contracts.cli``; lexigram-cli 0.1.5009 calls health checks
without a container and loads no shell context. Nothing here imports typer or rich:
lexigram-cli imports the command group itself, from ``app_factory_path``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lexigram import Application
from lexigram.contracts.cli.contributions import (
    CommandContribution,
    DoctorCheckContribution,
    HealthCheckContribution,
    HookContribution,
    ShellContextContribution,
)
from lexigram.contracts.cli.types import GeneratorDefinition
from lexigram.contracts.core.health import HealthCheckResult, HealthStatus
from lexigram.contracts.infra.storage import BlobStoreProtocol
from lexigram.logging import configure_logging

from lexigram_storage.cli.doctor import run_checks
from lexigram_storage.provider import StorageProvider

__all__ = ["StorageCliContributor", "doctor_check", "health_check", "shell_store"]

_ID = "storage"
_HERE = "lexigram_storage.cli.contributor"


class StorageCliContributor:
    """What lexigram_storage adds to the ``lexigram`` command line."""

    @property
    def contributor_id(self) -> str:
        return _ID

    def get_generators(self) -> list[GeneratorDefinition]:
        return []

    def get_commands(self) -> list[CommandContribution]:
        return [CommandContribution(
            name="storage", help="Blob storage: list, copy, sync and sign objects of the "
                                 "configured backends",
            app_factory_path="lexigram_storage.cli.app:create_app", contributor=_ID,
            category="storage")]

    def get_health_checks(self) -> list[HealthCheckContribution]:
        return [HealthCheckContribution(
            name="storage_backends", description="Every storage backend answers a probe",
            check_path=f"{_HERE}:health_check", contributor=_ID, category="storage",
            timeout=10.0, critical=True)]

    def get_doctor_checks(self) -> list[DoctorCheckContribution]:
        return [DoctorCheckContribution(
            name="storage", description="The storage: configuration is valid and every "
                                        "backend answers a probe",
            check_path=f"{_HERE}:doctor_check", contributor=_ID, category="storage")]

    def get_shell_context(self) -> list[ShellContextContribution]:
        return [ShellContextContribution(
            name="storage", description="The default storage backend (BlobStoreProtocol)",
            factory_path=f"{_HERE}:shell_store", contributor=_ID)]

    def get_hooks(self) -> list[HookContribution]:
        return []


def doctor_check() -> Any:
    """Validate the ``storage:`` configuration (the working directory's ``application.yaml``,
    as lexigram-cli's own checks read it, and ``LEX_STORAGE__*``) and health-check every
    backend; a lexigram-cli ``CheckResult``: FAIL naming what failed."""
    from lexigram.cli.registry.health import CheckResult, CheckStatus  # lexigram-cli's

    # lexigram logs to stdout and lexigram-cli leaves its logging unconfigured: without this,
    # building the backends would print their debug lines among the doctor's report.
    configure_logging(level="CRITICAL")
    checks = asyncio.run(run_checks(None))
    failed = [check for check in checks if not check.ok]
    return CheckResult(
        name="storage", status=CheckStatus.FAIL if failed else CheckStatus.PASS,
        message="; ".join(f"{check.name}: {check.message}" for check in failed or checks),
        details={"checks": [check.to_dict() for check in checks]})


async def health_check(container: Any) -> HealthCheckResult:
    """The storage component of a booted application: every backend probed, worst status."""
    app = await container.resolve_optional(Application)
    provider = next((p for p in getattr(app, "providers", []) if isinstance(p, StorageProvider)),
                    None)
    if provider is None:
        return HealthCheckResult(component="storage", status=HealthStatus.UNKNOWN,
                                 message="StorageModule is not part of this application")
    return await provider.health_check()


async def shell_store(container: Any) -> BlobStoreProtocol:
    store: BlobStoreProtocol = await container.resolve(BlobStoreProtocol)
    return store
