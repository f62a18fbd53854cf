"""The storage command line against real servers: SeaweedFS (S3), fake-gcs-server (GCS) and
Azurite (Azure), each beside a local backend, run as a subprocess like a user would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.azurite_server import AzuriteSettings, azure_service_for
from tests.cli_support import cli_env, command, local_backend, ok, run, tree, write_config
from tests.emulators import S3Settings, create_bucket
from tests.gcs_server import FaultProxy, GcsSettings

MiB = 1024 * 1024


@pytest.fixture(params=["s3", "gcs", "azure"])
async def remote(request: pytest.FixtureRequest, unique_name: str) -> dict[str, Any]:
    """The backend `remote` on a fresh bucket or container of one of the servers."""
    if request.param == "s3":
        s3: S3Settings = request.getfixturevalue("seaweedfs_server")
        await create_bucket(s3, unique_name)
        block: dict[str, Any] = {"bucket": unique_name, "endpoint_url": s3.endpoint_url,
                                 "region": s3.region, "access_key": s3.access_key,
                                 "secret_key": s3.secret_key, "addressing_style": "path",
                                 "multipart_threshold": 5 * MiB,
                                 "multipart_chunk_size": 5 * MiB}
    elif request.param == "gcs":
        gcs: GcsSettings = request.getfixturevalue("gcs_server")
        bucket = request.getfixturevalue("gcs_bucket")
        block = {"bucket": bucket, "endpoint_url": gcs.endpoint_url,
                 "credentials_path": gcs.service_file, "resumable_threshold": MiB,
                 "chunk_size": MiB}
    else:
        azurite: AzuriteSettings = request.getfixturevalue("azurite")
        async with azure_service_for(azurite) as service:
            await service.create_container(unique_name)
        block = {"container": unique_name, "connection_string": azurite.connection_string,
                 "block_upload_threshold": MiB, "block_size": MiB}
    return {"name": "remote", "driver": request.param, request.param: block}


@pytest.fixture
def work(tmp_path: Path, remote: dict[str, Any]) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    write_config(folder, [{**local_backend("files", tmp_path / "files"), "primary": True},
                          remote])
    return folder


def test_commands_on_a_server_backend(work: Path, remote: dict[str, Any]) -> None:
    driver = remote["driver"]
    rows = json.loads(ok(work, "backends", "--json").out)
    assert [(r["name"], r["driver"], r["status"]) for r in rows] == [
        ("files", "local", "healthy"), ("remote", driver, "healthy")]
    assert ok(work, "doctor").text.splitlines()[2].startswith(f"ok   backend remote: {driver} ")

    big = os.urandom(3 * MiB + 5)  # above the thresholds: parts, blocks or a resumable upload
    (work / "big.bin").write_bytes(big)
    ok(work, "put", "big.bin", "remote:data/", "-m", "owner=ops", "--content-type", "image/x-raw")
    ok(work, "put", "-", "remote:data/small.txt", input=b"small")
    assert ok(work, "ls", "remote:").text == "data/\n"
    assert ok(work, "ls", "-r", "remote:data").text == "data/big.bin\ndata/small.txt\n"
    info = json.loads(ok(work, "info", "--json", "remote:data/big.bin").out)
    assert (info["size"], info["content_type"], info["metadata"]) == \
        (len(big), "image/x-raw", {"owner": "ops"})
    assert ok(work, "cat", "remote:data/big.bin").out == big

    # within the server (its own copy), then across backends both ways: attributes kept
    ok(work, "cp", "remote:data/big.bin", "remote:copy/big.bin")
    ok(work, "cp", "remote:copy/big.bin", "files:from-remote.bin")
    ok(work, "mv", "files:from-remote.bin", "remote:back/big.bin")
    for key in ("copy/big.bin", "back/big.bin"):
        copied = json.loads(ok(work, "info", "--json", f"remote:{key}").out)
        assert (copied["etag"], copied["content_type"], copied["metadata"]) == \
            (info["etag"], "image/x-raw", {"owner": "ops"})
    ok(work, "get", "remote:back/big.bin", "got.bin")
    assert (work / "got.bin").read_bytes() == big

    result = run(work, "put", "-", "remote:data/small.txt", "--if-absent", input=b"again")
    assert result.code == 1 and result.err.startswith("error: remote: object already exists")
    result = run(work, "cat", "remote:nope")
    assert (result.code, result.err) == (1, "error: remote: object not found (key 'nope')\n")

    url = ok(work, "presign", "remote:data/small.txt", "--expires", "10m").text.strip()
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"small"

    assert ok(work, "rm", "-r", "remote:").text == "removed 4 objects under remote:\n"
    assert ok(work, "ls", "-r", "remote:").text == ""


def test_two_backend_names_on_one_bucket_are_one_place(tmp_path: Path, remote: dict[str, Any]
                                                        ) -> None:
    """mv, cp and sync between two names of one bucket (or container) refuse what would write
    an object onto itself or sync a prefix into itself."""
    write_config(tmp_path, [remote, {**remote, "name": "again"}])
    ok(tmp_path, "put", "-", "remote:a/k.txt", input=b"kept")
    for args, message in (
            (("mv", "remote:a/k.txt", "again:a/k.txt"),
             "remote:a/k.txt and again:a/k.txt are the same object"),
            (("cp", "again:a/k.txt", "remote:a/"),
             "again:a/k.txt and remote:a/k.txt are the same object"),
            (("sync", "remote:a", "again:a/b", "--delete"),
             "remote:a and again:a/b overlap: sync needs two separate folders or prefixes")):
        result = run(tmp_path, *args)
        assert (result.code, result.err) == (2, f"error: {message}\n")
    assert ok(tmp_path, "ls", "-r", "again:").text == "a/k.txt\n"
    assert ok(tmp_path, "cat", "again:a/k.txt").out == b"kept"
    ok(tmp_path, "mv", "remote:a/k.txt", "again:b/k.txt")  # another key: an ordinary move
    assert ok(tmp_path, "ls", "-r", "remote:").text == "b/k.txt\n"


def test_sync_folder_to_server_and_back(work: Path) -> None:
    src = work / "site"
    files = {"index.html": b"<p>hi</p>", "a/b/c.txt": b"c" * 100, "big.bin": os.urandom(2 * MiB)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    first = json.loads(ok(work, "sync", "site", "remote:www", "--json").out)
    assert first["copied"] == ["a/b/c.txt", "big.bin", "index.html"]
    second = json.loads(ok(work, "sync", "site", "remote:www", "--json").out)
    assert (second["copied"], second["unchanged"]) == ([], 3)  # etags compared to local SHA-256
    (src / "index.html").write_bytes(b"<p>ho</p>")
    (src / "a" / "b" / "c.txt").unlink()
    third = json.loads(ok(work, "sync", "site", "remote:www", "--delete", "--json").out)
    assert (third["copied"], third["deleted"]) == (["index.html"], ["a/b/c.txt"])
    ok(work, "sync", "remote:www", "files:mirror", "-j", "3")
    ok(work, "sync", "files:mirror", "copy")
    assert tree(work / "copy") == tree(src)


def test_an_interrupted_sync_to_a_server_finishes_when_run_again(work: Path) -> None:
    src = work / "many"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02}.bin").write_bytes(os.urandom(MiB + i))
    proc = subprocess.Popen(command("sync", "many", "remote:many", "-j", "2"), cwd=work,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"copy ")
    proc.send_signal(2)  # SIGINT
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    listed = json.loads("[" + ",".join(ok(work, "ls", "--json", "-r", "remote:many").text
                                       .splitlines()) + "]")
    assert 1 <= len(listed) < 40
    rerun = json.loads(ok(work, "sync", "many", "remote:many", "--json").out)
    assert rerun["unchanged"] == len(listed)  # what was stored is complete: not copied again
    ok(work, "sync", "remote:many", "back")
    assert tree(work / "back") == tree(src)


async def test_put_and_sync_hand_a_file_of_known_size_to_the_driver(
        tmp_path: Path, gcs_proxy: FaultProxy, gcs_server: GcsSettings, gcs_bucket: str) -> None:
    """A local file reaches the driver as a file, its size known: on GCS a file above the
    resumable threshold goes as one streamed PUT of all its bytes with its digest set at the
    start, not as chunks of a stream of unknown size followed by a metadata PATCH."""
    write_config(tmp_path, [{"name": "remote", "driver": "gcs", "gcs": {
        "bucket": gcs_bucket, "endpoint_url": gcs_proxy.endpoint,
        "credentials_path": gcs_server.service_file, "resumable_threshold": MiB,
        "chunk_size": MiB}}])
    data = os.urandom(3 * MiB + 5)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "big.bin").write_bytes(data)
    async def cli(*args: str) -> bytes:  # the proxy answers meanwhile: no blocking wait
        proc = await asyncio.create_subprocess_exec(
            *command(*args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err
        return out

    for args in (("put", "site/big.bin", "remote:put/big.bin"), ("sync", "site", "remote:sync")):
        gcs_proxy.seen.clear()
        await cli(*args)
        assert gcs_proxy.requests("PATCH") == []
        [upload] = gcs_proxy.requests("PUT", "/upload/")
        assert upload.headers["content-range"] == f"bytes 0-{len(data) - 1}/{len(data)}"
    assert await cli("cat", "remote:sync/big.bin") == data
