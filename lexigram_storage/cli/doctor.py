"""Checks of a configuration and its backends, shared by ``backends``, ``doctor`` and the
checks lexigram-cli runs (``lexigram system doctor``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lexigram.contracts.core.health import HealthStatus

from lexigram_storage.cli.session import Backends, UsageError, open_backends

__all__ = ["Check", "probe", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "message": self.message, **self.details}


async def probe(backends: Backends, name: str) -> dict[str, Any]:
    """Prepare backend *name* and health-check it within the configured timeout: its name,
    driver, bucket, whether it is the default, status, latency and error. Never raises."""
    driver = backends.driver(name)
    timeout = backends.config.health_check_timeout
    row: dict[str, Any] = {"name": name, "driver": driver.driver, "bucket": driver.bucket,
                           "default": name == backends.default}
    try:
        await asyncio.wait_for(backends.get(name), timeout)
    except TimeoutError:
        return {**row, "status": HealthStatus.UNHEALTHY.value, "latency_ms": None,
                "error": f"not ready within {timeout}s"}
    except Exception as exc:
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return {**row, "status": HealthStatus.UNHEALTHY.value, "latency_ms": None,
                "error": " ".join(str(reason).split())}
    result = await driver.health_check(timeout)
    return {**row, "status": result.status.value,
            "latency_ms": round(result.duration_ms, 1), "error": result.error}


async def run_checks(config: Path | None) -> list[Check]:
    """The configuration check, then one health check per backend (concurrently)."""
    try:
        backends = await open_backends(config)
    except UsageError as exc:
        return [Check("configuration", False, str(exc))]
    try:
        checks = [Check("configuration", True,
                        f"{len(backends.names)} backend(s): {', '.join(backends.names)} "
                        f"(default: {backends.default})")]
        for row in await asyncio.gather(*(probe(backends, n) for n in backends.names)):
            ok = row["status"] == HealthStatus.HEALTHY.value
            message = (f"{row['driver']} {row['bucket']}: {row['latency_ms']} ms" if ok
                       else f"{row['driver']} {row['bucket']}: {row['error']}")
            checks.append(Check(f"backend {row['name']}", ok, message, {"backend": row}))
        return checks
    finally:
        await backends.aclose()
