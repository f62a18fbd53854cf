"""Print the configuration reference tables of the README from the config models."""

from __future__ import annotations

from pydantic import BaseModel

from lexigram_storage.config import (
    EncryptionConfig,
    NamedStorageConfig,
    StorageAzureConfig,
    StorageConfig,
    StorageEventsConfig,
    StorageGCSConfig,
    StorageKVConfig,
    StorageLocalConfig,
    StorageMemoryConfig,
    StorageOperationConfig,
    StorageR2Config,
    StorageS3Config,
)


def esc(s):
    return str(s).replace("|", "\\|")


def tname(f):
    s = str(f.annotation)
    for a, b in [
        ("typing.", ""),
        ("<class '", ""),
        ("'>", ""),
        ("pydantic.types.", ""),
        ("lexigram_storage.config.", ""),
        ("NoneType", "None"),
        ("Annotated[list[str], NoDecode]", "list[str]"),
    ]:
        s = s.replace(a, b)
    return s


def default(f):
    if f.is_required():
        return "required"
    if f.default_factory is not None:
        try:
            v = f.default_factory()
        except TypeError:
            return "-"
        if isinstance(v, BaseModel):
            return "(defaults)"
        return repr(v)
    return repr(f.default)


def rows(model, prefix, env):
    for name, f in model.model_fields.items():
        print(
            f"| `{prefix}{name}` | {esc(tname(f))} | {esc(default(f))} | `{env}{name.upper()}` | {esc(f.description or '')} |"  # noqa: E501
        )


print("| key | type | default | env var | meaning |\n|---|---|---|---|---|")
for name, f in StorageConfig.model_fields.items():
    if name in ("drivers", "service", "events", "backends", "kv"):
        continue
    print(
        f"| `{name}` | {esc(tname(f))} | {esc(default(f))} | `LEX_STORAGE__{name.upper()}` | {esc(f.description or '')} |"  # noqa: E501
    )
rows(StorageOperationConfig, "service.", "LEX_STORAGE__SERVICE__")
rows(StorageEventsConfig, "events.", "LEX_STORAGE__EVENTS__")
rows(StorageKVConfig, "kv.", "LEX_STORAGE__KV__")
for drv, model in [
    ("memory", StorageMemoryConfig),
    ("local", StorageLocalConfig),
    ("s3", StorageS3Config),
    ("r2", StorageR2Config),
    ("gcs", StorageGCSConfig),
    ("azure", StorageAzureConfig),
]:
    rows(model, f"drivers.{drv}.", f"LEX_STORAGE__DRIVERS__{drv.upper()}__")
rows(EncryptionConfig, "drivers.s3.encryption.", "LEX_STORAGE__DRIVERS__S3__ENCRYPTION__")
print()
print("| key | type | default | meaning |\n|---|---|---|---|")
for name, f in NamedStorageConfig.model_fields.items():
    print(f"| `backends[].{name}` | {esc(tname(f))} | {esc(default(f))} | {esc(f.description or '')} |")
