"""StorageConfig: validation, environment variables, production security, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from lexigram_storage import (
    EncryptionConfig,
    NamedStorageConfig,
    StorageAzureConfig,
    StorageConfig,
    StorageLocalConfig,
    StorageR2Config,
    StorageS3Config,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LEX_STORAGE__") or key == "LEX_ENV":
            monkeypatch.delenv(key)


def test_defaults() -> None:
    config = StorageConfig()
    assert config.default_driver == "local"
    assert config.drivers.local.root_dir == "./storage"
    assert config.service.max_file_size_mb is None
    assert config.service.allowed_mime_types == []
    assert config.service.policy() is None
    assert config.default_backend() == "local"
    assert config.env == "development"


def test_default_driver_must_be_known() -> None:
    with pytest.raises(ValidationError) as exc:
        StorageConfig(default_driver="ftp")  # type: ignore[arg-type]
    text = str(exc.value)
    assert "default_driver" in text
    for name in ("local", "memory", "s3", "r2", "gcs", "azure"):
        assert f"'{name}'" in text


def test_env_vars_and_explicit_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEX_STORAGE__DEFAULT_DRIVER", "s3")
    monkeypatch.setenv("LEX_STORAGE__DRIVERS__S3__BUCKET", "env-bucket")
    monkeypatch.setenv("LEX_STORAGE__DRIVERS__S3__REGION", "eu-west-1")
    monkeypatch.setenv("LEX_STORAGE__SERVICE__MAX_FILE_SIZE_MB", "25")
    monkeypatch.setenv("LEX_STORAGE__SERVICE__ALLOWED_MIME_TYPES", "image/*, application/pdf")
    monkeypatch.setenv("LEX_STORAGE__HEALTH_CHECK_TIMEOUT", "2.5")
    config = StorageConfig()
    assert config.default_driver == "s3"
    assert config.drivers.s3 is not None
    assert config.drivers.s3.bucket == "env-bucket"
    assert config.drivers.s3.region == "eu-west-1"
    assert config.service.max_file_size_mb == 25
    assert config.service.allowed_mime_types == ["image/*", "application/pdf"]
    policy = config.service.policy()
    assert policy is not None
    assert policy.max_bytes == 25 * 1024 * 1024
    assert config.health_check_timeout == 2.5
    assert StorageConfig(default_driver="memory").default_driver == "memory"


def test_backends_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEX_STORAGE__BACKENDS",
                       '[{"name": "a", "driver": "memory", "primary": true}]')
    assert StorageConfig().default_backend() == "a"


def test_named_backend_errors_name_the_entry_and_field() -> None:
    with pytest.raises(ValidationError, match=r"duplicate backend name 'a' \(backends\[0\] and "
                                              r"backends\[2\]\)"):
        StorageConfig(backends=[NamedStorageConfig(name="a", driver="memory"),
                                NamedStorageConfig(name="b", driver="memory"),
                                NamedStorageConfig(name="a", driver="memory")])
    with pytest.raises(ValidationError, match=r"more than one primary backend: \['a', 'b'\]"):
        StorageConfig(backends=[NamedStorageConfig(name="a", driver="memory", primary=True),
                                NamedStorageConfig(name="b", driver="memory", primary=True)])
    with pytest.raises(ValidationError, match="backend 'pics' uses driver 's3' but has no 's3'"):
        StorageConfig(backends=[{"name": "pics", "driver": "s3"}])  # type: ignore[list-item]
    with pytest.raises(ValidationError) as exc:
        StorageConfig(backends=[{"name": "pics", "driver": "s3", "s3": {}}])  # type: ignore[list-item]
    assert "backends.0.s3.bucket" in str(exc.value)
    with pytest.raises(ValidationError, match=r"drivers\.s3 is not set"):
        StorageConfig(default_driver="s3")


def test_driver_block_rules() -> None:
    with pytest.raises(ValidationError, match="r2 needs endpoint_url or account_id"):
        StorageR2Config(bucket="b")
    r2 = StorageR2Config(bucket="b", account_id="abc")
    assert r2.endpoint_url == "https://abc.r2.cloudflarestorage.com"
    assert r2.region == "auto"
    with pytest.raises(ValidationError, match="together"):
        StorageS3Config(bucket="b", access_key="AKIA")
    with pytest.raises(ValidationError, match="connection_string or account_name"):
        StorageAzureConfig(container="c")
    with pytest.raises(ValidationError, match="do not also set account_key, account_url"):
        StorageAzureConfig(container="c", connection_string="AccountName=a",  # type: ignore[arg-type]
                           account_key="k", account_url="http://h")  # type: ignore[arg-type]
    azure = StorageAzureConfig(container="c", account_name="acct")
    assert (azure.connect_timeout, azure.read_timeout, azure.max_attempts) == (10.0, 60.0, 3)
    with pytest.raises(ValidationError, match="kms_key_id"):
        EncryptionConfig(enabled=True, type="aws:kms")


def test_from_named() -> None:
    entry = NamedStorageConfig(name="docs", driver="local",
                               local=StorageLocalConfig(root_dir="/srv/docs"))
    config = StorageConfig.from_named(entry)
    assert config.name == "docs"
    assert config.default_driver == "local"
    assert config.drivers.local.root_dir == "/srv/docs"


def test_secrets_never_in_repr() -> None:
    config = StorageConfig(drivers={"s3": StorageS3Config(bucket="b", access_key="AKIAXYZ",
                                                         secret_key=SecretStr("s3cr3t-value"))})
    assert "s3cr3t-value" not in repr(config)
    assert "s3cr3t-value" not in str(config.model_dump())
    local = StorageLocalConfig(signing_key=SecretStr("hmac-key-123"))
    assert "hmac-key-123" not in repr(local)


@pytest.mark.parametrize("weak", ["change-me", "password", "secret", "minioadmin", "CHANGEME"])
def test_production_rejects_placeholder_secrets(monkeypatch: pytest.MonkeyPatch,
                                                weak: str) -> None:
    monkeypatch.setenv("LEX_ENV", "production")
    with pytest.raises(ValidationError) as exc:
        StorageConfig(drivers={"s3": StorageS3Config(bucket="b", access_key="AKIAREAL",
                                                     secret_key=SecretStr(weak))})
    assert "drivers.s3.secret_key is a placeholder credential" in str(exc.value)
    assert f"'{weak}'" not in str(exc.value)
    with pytest.raises(ValidationError, match=r"backends\[0\].local.signing_key"):
        StorageConfig(backends=[NamedStorageConfig(
            name="a", driver="local", local=StorageLocalConfig(signing_key=SecretStr(weak)))])
    strong = StorageConfig(drivers={"s3": StorageS3Config(
        bucket="b", access_key="AKIAREAL", secret_key=SecretStr("q8Z!kP2x-long-random"))})
    assert strong.drivers.s3 is not None


def test_development_allows_placeholders() -> None:
    config = StorageConfig(drivers={"s3": StorageS3Config(bucket="b", access_key="minioadmin",
                                                         secret_key=SecretStr("minioadmin"))})
    assert config.drivers.s3 is not None


# ------------------------------------------------------------ no secret in any validation error

_SECRET = "Zq8vX3tLw9pR2mK7yB4nQ"


def _secret_free(error: BaseException) -> None:
    for text in (str(error), repr(error), str(error.__cause__), repr(error.__cause__)):
        # not even a part of it: pydantic cuts long inputs to their start and end
        for start in range(len(_SECRET) - 6):
            assert _SECRET[start:start + 6] not in text


def test_every_config_model_hides_inputs_in_errors() -> None:
    import inspect

    from pydantic import BaseModel

    from lexigram_storage import config as config_module

    models = [cls for _, cls in inspect.getmembers(config_module, inspect.isclass)
              if issubclass(cls, BaseModel) and cls.__module__ == config_module.__name__]
    assert StorageConfig in models
    assert len(models) >= 12
    for model in models:
        assert model.model_config.get("hide_input_in_errors") is True, model.__name__


@pytest.mark.parametrize("build", [
    lambda: StorageS3Config(bucket="b", access_key="AKIA", secret_key=_SECRET,  # type: ignore[arg-type]
                            max_attempts="x"),  # type: ignore[arg-type]
    lambda: StorageS3Config(bucket="b", access_key="AKIA", secret_key="s",  # type: ignore[arg-type]
                            session_token=_SECRET, read_timeout="slow"),  # type: ignore[arg-type]
    lambda: StorageR2Config(bucket="b", account_id="acc", access_key="AKIA",
                            secret_key=_SECRET, max_concurrency="many"),  # type: ignore[arg-type]
    lambda: StorageLocalConfig(signing_key=_SECRET, root_dir=3.5),  # type: ignore[arg-type]
    lambda: StorageLocalConfig(signing_key=_SECRET, colour="blue"),  # type: ignore[call-arg]
    lambda: StorageAzureConfig(container="c", account_name="acct", account_key=_SECRET,  # type: ignore[arg-type]
                               read_timeout="x"),  # type: ignore[arg-type]
    lambda: StorageAzureConfig(container=7, connection_string=_SECRET),  # type: ignore[arg-type]
    lambda: NamedStorageConfig(name="n", driver="s3", s3={  # type: ignore[arg-type]
        "bucket": "b", "access_key": "AKIA", "secret_key": _SECRET, "max_attempts": "x"}),
    lambda: StorageConfig(drivers={"s3": {"bucket": "b", "access_key": "AKIA",  # type: ignore[dict-item]
                                          "secret_key": _SECRET, "max_attempts": "x"}}),
    lambda: StorageConfig(backends=[{"name": "n", "driver": "local",  # type: ignore[list-item]
                                     "local": {"signing_key": _SECRET, "bad": 1}}]),
], ids=["s3-secret", "s3-session-token", "r2", "local", "local-extra", "azure-key",
        "azure-connection-string", "named", "storage-config", "storage-config-backends"])
def test_validation_errors_never_print_secrets(build: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        build()
    _secret_free(exc.value)
    assert "input_value" not in str(exc.value)


@pytest.mark.parametrize(("driver", "bad"), [
    ("S3", {"MAX_ATTEMPTS": "x"}),  # a bad field value
    ("S3", {"ACCESS_KEY": ""}),  # a rule over the block (access and secret key together)
    ("R2", {}),  # R2 without endpoint_url or account_id
])
def test_env_validation_errors_never_print_secrets(monkeypatch: pytest.MonkeyPatch, driver: str,
                                                   bad: dict[str, str]) -> None:
    _secret_env(monkeypatch, driver, bad)
    with pytest.raises(ValidationError) as exc:
        StorageConfig()
    _secret_free(exc.value)


def _secret_env(monkeypatch: pytest.MonkeyPatch, driver: str, bad: dict[str, str]) -> None:
    monkeypatch.setenv("LEX_STORAGE__DEFAULT_DRIVER", driver.lower())
    values = {"BUCKET": "b", "ACCESS_KEY": "AKIA", "SECRET_KEY": _SECRET, **bad}
    for name, value in values.items():
        if value:
            monkeypatch.setenv(f"LEX_STORAGE__DRIVERS__{driver}__{name}", value)


@pytest.mark.parametrize(("driver", "bad"), [("S3", {"MAX_ATTEMPTS": "x"}), ("S3", {"ACCESS_KEY": ""}),
                                             ("R2", {})])
async def test_provider_config_errors_never_print_secrets(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Any, driver: str,
                                                          bad: dict[str, str]) -> None:
    """The provider's path: the application's storage section with LEX_STORAGE__* overrides."""
    from lexigram import Application
    from lexigram.di.module import Module, module

    from lexigram_storage import StorageConfigurationError, StorageModule

    monkeypatch.chdir(tmp_path)
    _secret_env(monkeypatch, driver, bad)

    @module(imports=[StorageModule.configure()])
    class AppModule(Module):
        pass

    app = Application(name="secret-test")
    app.add_module(AppModule)
    try:
        with pytest.raises(StorageConfigurationError) as exc:
            await app.start()
    finally:
        await app.stop()
    assert "invalid 'storage' configuration" in exc.value.message
    _secret_free(exc.value)


def test_every_driver_is_built_from_its_settings_block(tmp_path: Path) -> None:
    """``from_config`` and the constructor run the same model: the driver keeps the block it
    was built from, and an invalid constructor argument fails like an invalid block."""
    from lexigram_storage.config import StorageLocalConfig, StorageMemoryConfig
    from lexigram_storage.drivers.local import LocalDriver
    from lexigram_storage.drivers.memory import MemoryDriver
    from lexigram_storage.errors import StorageConfigurationError

    local = StorageLocalConfig(root_dir=str(tmp_path), signing_key="k" * 16, fsync=True)
    built = LocalDriver.from_config(local, name="files")
    assert built.settings == local and built.name == "files" and built.fsync
    assert LocalDriver(tmp_path, signing_key="k" * 16, fsync=True).settings == local
    memory = StorageMemoryConfig(bucket="b")
    assert MemoryDriver.from_config(memory).settings == memory
    with pytest.raises(StorageConfigurationError, match="fsync"):
        LocalDriver(tmp_path, fsync="sometimes")  # type: ignore[arg-type]
