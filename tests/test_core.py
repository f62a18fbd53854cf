"""Key rule, payload handling and the error hierarchy."""

from __future__ import annotations

import io
from typing import Any

import pytest
from lexigram.contracts.infra.storage import StorageError, UploadOptions

from lexigram_storage import errors
from lexigram_storage.keys import validate_key, validate_prefix
from lexigram_storage.payload import Payload, UploadPolicy, UploadRequest, guess_content_type


@pytest.mark.parametrize("key", ["a", "a/b/c.txt", "..a", "a/..b", "a/.hidden", "ü/ñ ✓",
                                 "x" * 1024, "a:b@c"])
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), [
    ("", "empty"), ("/x", "relative"), ("a/../b", "'..'"), ("./a", "'.'"), ("a//b", "empty"),
    ("a/", "trailing"), ("a\\b", "backslash"), ("a\x00", "control"), ("a\x1fb", "control"),
    ("a\x85", "control"), ("é" * 513, "1024"),
])
def test_invalid_keys_explain_why(key: str, reason: str) -> None:
    with pytest.raises(errors.InvalidPathError) as exc:
        validate_key(key, "avatars")
    assert reason in exc.value.message
    assert exc.value.message.startswith("avatars: ")
    assert exc.value.key == key


def test_prefix_rule() -> None:
    for prefix in ("", "a", "a/", "photos/20", "a/b/"):
        assert validate_prefix(prefix) == prefix
    for bad in ("/a", "a//", "a/../", "a\\"):
        with pytest.raises(errors.InvalidPathError):
            validate_prefix(bad)


def test_content_type_guessing() -> None:
    assert guess_content_type("a/b.PNG") == "image/png"
    assert guess_content_type("backup.tar.gz") == "application/gzip"
    assert guess_content_type("README.md") == "text/markdown"
    assert guess_content_type("a.svg") == "image/svg+xml"
    assert guess_content_type("dir.d/file") == "application/octet-stream"
    assert guess_content_type(".env") == "application/octet-stream"


class CountingFile(io.RawIOBase):
    """A file object that records the size of every read."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.reads.append(n)
        take = self.remaining if n < 0 else min(n, self.remaining)
        self.remaining -= take
        return b"x" * take


async def test_file_objects_are_read_in_chunks_never_whole() -> None:
    f = CountingFile(5 * 1024 * 1024 + 1)
    request = UploadRequest(content_type="application/octet-stream")
    payload = Payload(f, request, backend="t", key="k")
    total = 0
    async for chunk in payload:
        assert len(chunk) <= 1024 * 1024
        total += len(chunk)
    assert total == 5 * 1024 * 1024 + 1
    assert all(0 < n <= 1024 * 1024 for n in f.reads)
    assert payload.size == total


async def test_async_file_objects_are_supported() -> None:
    class AsyncFile:
        def __init__(self) -> None:
            self.buf = io.BytesIO(b"abc" * 1000)

        async def read(self, n: int) -> bytes:
            return self.buf.read(n)

    payload = Payload(AsyncFile(), UploadRequest(content_type="x/y"), backend="t", key="k")
    assert await payload.read_all() == b"abc" * 1000


def test_upload_request_merging() -> None:
    opts = UploadOptions(content_type="image/png", metadata={"A": "1"}, cache_control="c",
                         public=True)
    req = UploadRequest.build("k.txt", opts, {"metadata": {"B": 2}}, backend="t")
    assert req.content_type == "image/png"
    assert req.metadata == {"b": "2"}
    assert req.cache_control == "c"
    assert req.public
    assert UploadRequest.build("k.txt", None, {}, backend="t").content_type == "text/plain"
    with pytest.raises(TypeError, match="content_type must be a str"):
        UploadRequest.build("k", 42, {}, backend="t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a valid metadata name"):
        UploadRequest.build("k", None, {"metadata": {"bad key!": "v"}}, backend="t")
    with pytest.raises(ValueError, match="checksum algorithm"):
        UploadRequest.build("k", None, {"checksum": "crc99:00"}, backend="t")


def test_policy_patterns() -> None:
    policy = UploadPolicy(allowed_mime_types=("image/*", "application/pdf"))
    assert policy.allows_type("image/png")
    assert policy.allows_type("IMAGE/JPEG; charset=x")
    assert policy.allows_type("application/pdf")
    assert not policy.allows_type("application/pdfx")
    assert UploadPolicy().allows_type("anything/at-all")


def test_unsupported_payload_type() -> None:
    with pytest.raises(TypeError, match="cannot upload int"):
        Payload(42, UploadRequest(content_type="x/y"), backend="t", key="k")


CODES: dict[type[Any], str] = {
    errors.StorageFileNotFoundError: "LEX_ERR_STORE_002",
    errors.InvalidPathError: "LEX_ERR_STORE_004",
    errors.QuotaExceededError: "LEX_ERR_STORE_005",
    errors.ChecksumMismatchError: "LEX_ERR_STORE_006",
    errors.PreconditionFailedError: "LEX_ERR_STORE_007",
    errors.StoragePermissionError: "LEX_ERR_STORE_008",
    errors.StorageBucketNotFoundError: "LEX_ERR_STORE_009",
    errors.StorageUnavailableError: "LEX_ERR_STORE_010",
    errors.StorageConfigurationError: "LEX_ERR_STORE_012",
    errors.StorageBootError: "LEX_ERR_STORE_013",
    errors.InvalidUploadOptionError: "LEX_ERR_STORE_014",
    errors.StorageRequestRejectedError: "LEX_ERR_STORE_015",
    errors.InvalidPayloadError: "LEX_ERR_STORE_016",
}


@pytest.mark.parametrize(("cls", "code"), CODES.items())
def test_error_codes_and_messages(cls: type[Any], code: str) -> None:
    cause = OSError("sdk said no")
    err = cls("went wrong", backend="avatars", key="u/1.png", cause=cause)
    assert isinstance(err, StorageError)
    assert err.code == code
    assert err.message == "avatars: went wrong (key 'u/1.png')"
    assert err.__cause__ is cause
    assert err.details["backend"] == "avatars"
    assert str(err).startswith(f"[{code}] avatars: went wrong")


def test_not_found_is_builtin_file_not_found() -> None:
    err = errors.StorageFileNotFoundError(backend="b", key="k")
    assert isinstance(err, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        raise err


def test_partial_delete_carries_keys() -> None:
    err = errors.StoragePartialDeleteError({"a": "denied"}, ["b", "c"], backend="s3")
    assert err.failed == {"a": "denied"}
    assert err.deleted == ["b", "c"]
    assert err.code == "LEX_ERR_STORE_011"
    assert "1 of 3 keys not deleted" in err.message


def test_unsupported_is_the_contracts_error() -> None:
    from lexigram.contracts.infra.storage import StorageUnsupportedOperationError

    err = errors.unsupported("mem", "get_presigned_url", hint="use s3")
    assert type(err) is StorageUnsupportedOperationError
    assert err.code == "LEX_ERR_STORE_003"
    assert "mem" in err.message


def test_readme_documents_every_config_key() -> None:
    from pathlib import Path

    from lexigram_storage import config

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for model, prefix in [(config.StorageOperationConfig, "service."),
                          (config.StorageLocalConfig, "drivers.local."),
                          (config.StorageMemoryConfig, "drivers.memory."),
                          (config.StorageS3Config, "drivers.s3."),
                          (config.StorageR2Config, "drivers.r2."),
                          (config.StorageGCSConfig, "drivers.gcs."),
                          (config.StorageAzureConfig, "drivers.azure."),
                          (config.EncryptionConfig, "drivers.s3.encryption."),
                          (config.StorageEventsConfig, "events."),
                          (config.NamedStorageConfig, "backends[]."),
                          (config.StorageConfig, "")]:
        for field in model.model_fields:
            if model is config.StorageConfig and field in ("drivers", "service", "events",
                                                                   "backends"):
                continue
            assert f"`{prefix}{field}`" in readme, f"{prefix}{field} is not documented"
    for cls in ("StorageFileNotFoundError", "InvalidPathError", "QuotaExceededError",
                "ChecksumMismatchError", "PreconditionFailedError", "StoragePermissionError",
                "StorageBucketNotFoundError", "StorageUnavailableError",
                "StoragePartialDeleteError", "StorageConfigurationError", "StorageBootError",
                "InvalidUploadOptionError", "StorageRequestRejectedError", "InvalidPayloadError"):
        assert f"`{cls}`" in readme or f"`{cls}` (" in readme, cls


def test_driver_catalogue_is_a_leaf_and_config_needs_no_registry() -> None:
    """config.py and registry.py both read the catalogue; neither config.py nor the catalogue
    imports the registry or a driver (no import circle, not even a deferred one)."""
    import ast
    from pathlib import Path

    package = Path(__file__).parent.parent / "lexigram_storage"

    def imported(name: str) -> set[str]:
        tree = ast.parse((package / name).read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return {m for m in found if m.startswith("lexigram_storage")}

    assert imported("catalogue.py") == set()
    assert not {m for m in imported("config.py")
                if m.startswith(("lexigram_storage.registry", "lexigram_storage.drivers"))}
    assert "lexigram_storage.catalogue" in imported("registry.py")
    # the base driver needs neither the registry nor the configuration at run time or for types
    assert not {m for m in imported("drivers/base.py")
                if m.startswith(("lexigram_storage.registry", "lexigram_storage.provider"))}
