"""The storage command line, run as a subprocess against two local backends (files, backup).

Every run checks that no framework log line reached stdout or stderr (``cli_support.run``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lexigram_storage import LocalDriver
from tests.cli_support import ROOT, cli_env, command, local_backend, ok, run, tree, write_config


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory whose application.yaml names two local backends."""
    folder = tmp_path / "work"
    folder.mkdir()
    write_config(folder, [
        {**local_backend("files", tmp_path / "files", signing_key="cli-test-key"), "primary": True},
        local_backend("backup", tmp_path / "backup"),
    ])
    return folder


def test_importing_the_package_prints_nothing() -> None:
    done = subprocess.run([sys.executable, "-c", "import lexigram_storage"], env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_backends_lists_names_drivers_buckets_and_health(work: Path, tmp_path: Path) -> None:
    lines = ok(work, "backends").text.splitlines()
    assert lines[0].split()[:3] == ["*", "files", "local"]
    assert lines[1].split()[:2] == ["backup", "local"]
    rows = json.loads(ok(work, "backends", "--json").out)
    assert [(r["name"], r["driver"], r["default"], r["status"]) for r in rows] == [
        ("files", "local", True, "healthy"), ("backup", "local", False, "healthy")]
    assert rows[1]["bucket"] == str(tmp_path / "backup")
    assert rows[0]["error"] is None and rows[0]["latency_ms"] >= 0


def test_put_ls_info_cat_get(work: Path, tmp_path: Path) -> None:
    (work / "report.csv").write_text("month,revenue\n11,1200\n")
    out = ok(work, "put", "report.csv", "files:reports/2026/", "--metadata", "owner=finance",
             "-m", "team=ops").text
    assert out == "put report.csv -> files:reports/2026/report.csv\n"
    ok(work, "put", "report.csv", "top.txt", "--content-type", "text/x-custom")  # the default backend

    assert ok(work, "ls").text == "reports/\ntop.txt\n"
    assert ok(work, "ls", "files:reports").text == "reports/2026/\n"
    assert ok(work, "ls", "-r", "files:").text == "reports/2026/report.csv\ntop.txt\n"
    long = ok(work, "ls", "-l", "files:reports/2026/").text.split()
    assert long[0] == "22" and long[3:] == ["text/csv", "reports/2026/report.csv"]
    assert ok(work, "ls", "files:top.txt").text == "top.txt\n"  # one object

    lines = [json.loads(line) for line in ok(work, "ls", "--json", "files:").text.splitlines()]
    assert lines[0] == {"type": "prefix", "key": "reports/"}
    assert lines[1]["key"] == "top.txt" and lines[1]["content_type"] == "text/x-custom"
    assert lines[1]["etag"] == hashlib.sha256(b"month,revenue\n11,1200\n").hexdigest()

    info = json.loads(ok(work, "info", "--json", "files:reports/2026/report.csv").out)
    assert info["size"] == 22 and info["content_type"] == "text/csv"
    assert info["metadata"] == {"owner": "finance", "team": "ops"}
    assert info["backend"] == "files" and info["last_modified"]
    text = ok(work, "info", "files:reports/2026/report.csv").text
    assert "metadata.owner: finance" in text and "size:           22" in text

    assert ok(work, "cat", "files:reports/2026/report.csv").text == "month,revenue\n11,1200\n"
    ok(work, "get", "files:reports/2026/report.csv", "copy.csv")
    assert (work / "copy.csv").read_text() == "month,revenue\n11,1200\n"
    assert ok(work, "get", "top.txt", "-").text == "month,revenue\n11,1200\n"
    (work / "down").mkdir()
    assert ok(work, "get", "top.txt", "down").text == "get top.txt -> down/top.txt\n"
    assert (work / "down" / "top.txt").exists()
    assert ok(work, "cp", "files:top.txt", "new/dir/").text == \
        "copied files:top.txt -> new/dir/top.txt\n"
    assert (work / "new" / "dir" / "top.txt").exists()


def test_stdin_and_stdout_carry_binary_content_unchanged(work: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 11)
    ok(work, "put", "-", "files:blob.bin", input=data)
    assert ok(work, "cat", "files:blob.bin").out == data
    assert ok(work, "cp", "files:blob.bin", "-").out == data
    assert json.loads(ok(work, "info", "--json", "blob.bin").out)["content_type"] == \
        "application/octet-stream"


def test_put_if_absent_refuses_an_existing_object(work: Path) -> None:
    ok(work, "put", "-", "files:once.txt", "--if-absent", input=b"first")
    result = run(work, "put", "-", "files:once.txt", "--if-absent", input=b"second")
    assert result.code == 1
    assert result.err == ("error: files: object already exists and if_none_match='*' was given "
                          "(key 'once.txt')\n")
    assert ok(work, "cat", "files:once.txt").out == b"first"
    (work / "there.txt").write_bytes(b"kept")
    result = run(work, "cp", "files:once.txt", "there.txt")
    assert result.code == 0 and (work / "there.txt").read_bytes() == b"first"


def test_cp_and_mv_between_backends_files_and_within_one_backend(work: Path, tmp_path: Path
                                                                  ) -> None:
    ok(work, "put", "-", "files:a/doc.md", "-m", "owner=me", input=b"# doc\n")
    # across backends: content type and metadata kept
    assert ok(work, "cp", "files:a/doc.md", "backup:b/").text == \
        "copied files:a/doc.md -> backup:b/doc.md\n"
    copied = json.loads(ok(work, "info", "--json", "backup:b/doc.md").out)
    assert (copied["content_type"], copied["metadata"]) == ("text/markdown", {"owner": "me"})
    # within one backend (the server's copy), object -> file, file -> file
    ok(work, "cp", "files:a/doc.md", "files:a/copy.md")
    assert json.loads(ok(work, "info", "--json", "files:a/copy.md").out)["metadata"] == \
        {"owner": "me"}
    ok(work, "cp", "files:a/copy.md", "local.md")
    ok(work, "cp", "local.md", "local2.md")
    assert (work / "local2.md").read_bytes() == b"# doc\n"

    assert ok(work, "mv", "files:a/copy.md", "backup:moved.md").text == \
        "moved files:a/copy.md -> backup:moved.md\n"
    assert run(work, "info", "files:a/copy.md").code == 1
    ok(work, "mv", "files:a/doc.md", "files:a/renamed.md")
    assert ok(work, "ls", "files:a/").text == "a/renamed.md\n"
    ok(work, "mv", "local2.md", "files:from-file.md")
    assert not (work / "local2.md").exists()
    assert ok(work, "cat", "files:from-file.md").out == b"# doc\n"
    assert tree(tmp_path / "backup") == {"b/doc.md": b"# doc\n", "moved.md": b"# doc\n"}


def test_mv_and_cp_refuse_a_destination_that_is_the_source(work: Path, tmp_path: Path) -> None:
    """The same file or object by another name (a folder, a local backend's own file, two
    backends on one root, one reached through a symlink) is refused: nothing is lost."""
    (work / "f.txt").write_bytes(b"file")
    ok(work, "put", "-", "files:o.txt", input=b"object")
    stored = tmp_path / "files" / "o.txt"
    for args in (("mv", "f.txt", "f.txt"), ("mv", "f.txt", "./"), ("cp", "f.txt", "f.txt"),
                 ("mv", "f.txt", str(work / "f.txt")), ("mv", "files:o.txt", "files:o.txt"),
                 ("mv", "files:o.txt", str(stored)), ("mv", str(stored), "files:"),
                 ("cp", "files:o.txt", str(tmp_path / "files"))):
        result = run(work, *args)
        assert result.code == 2, (args, result.err)
        assert result.err.startswith("error: ") and " are the same " in result.err, result.err
        assert result.err.count("\n") == 1
    assert (work / "f.txt").read_bytes() == b"file" and stored.read_bytes() == b"object"

    shared = tmp_path / "shared"
    (tmp_path / "link").symlink_to(tmp_path / "files", target_is_directory=True)
    shared.mkdir()
    write_config(shared, [local_backend("loc", tmp_path / "files"),
                          local_backend("loc2", tmp_path / "files"),
                          local_backend("via", tmp_path / "link"),
                          local_backend("inner", tmp_path / "files" / "in")])
    ok(shared, "put", "-", "loc:in/x.txt", input=b"inner")
    for args, message in (
            (("mv", "loc:o.txt", "loc2:o.txt"), "loc:o.txt and loc2:o.txt"),
            (("mv", "loc:o.txt", "via:"), "loc:o.txt and via:o.txt"),
            (("cp", "loc2:o.txt", "loc:o.txt"), "loc2:o.txt and loc:o.txt"),
            (("mv", "loc:in/x.txt", "inner:x.txt"), "loc:in/x.txt and inner:x.txt"),
            (("mv", "inner:x.txt", "loc2:in/"), "inner:x.txt and loc2:in/x.txt")):
        result = run(shared, *args)
        assert (result.code, result.err) == (2, f"error: {message} are the same object\n")
    assert stored.read_bytes() == b"object"
    assert (tmp_path / "files" / "in" / "x.txt").read_bytes() == b"inner"
    # another key on the same root is an ordinary move
    assert ok(shared, "mv", "loc:o.txt", "loc2:p.txt").text == "moved loc:o.txt -> loc2:p.txt\n"
    assert (tmp_path / "files" / "p.txt").read_bytes() == b"object" and not stored.exists()


def test_sync_refuses_folders_or_prefixes_that_overlap(work: Path, tmp_path: Path) -> None:
    _make_folder(tmp_path / "files", {"a/x.txt": b"x", "a/b/y.txt": b"y"})
    before = tree(tmp_path / "files")
    (work / "site").mkdir()
    for src, dst in (("files:a", "files:a/b"), ("files:a/b", "files:a"), ("files:a", "files:a/"),
                     ("files:", "files:a"), (str(tmp_path / "files" / "a"), "files:a/b"),
                     ("files:a/b", str(tmp_path / "files")), ("site", "site/sub")):
        result = run(work, "sync", src, dst, "--delete")
        assert (result.code, result.err) == (2, f"error: {src} and {dst} overlap: sync needs "
                                                "two separate folders or prefixes\n")
    assert tree(tmp_path / "files") == before


def test_rm_one_object_and_a_prefix(work: Path) -> None:
    for key in ("x/1", "x/2", "x/y/3", "xx"):
        ok(work, "put", "-", f"files:{key}", input=b".")
    assert ok(work, "rm", "files:xx").text == "removed files:xx\n"
    assert ok(work, "rm", "-r", "files:x").text == "removed 3 objects under files:x/\n"
    assert ok(work, "ls", "-r", "files:").text == ""
    result = run(work, "rm", "files:xx")
    assert (result.code, result.err) == (1, "error: files: object not found (key 'xx')\n")


def test_a_reader_closing_stdout_ends_the_command_quietly(work: Path, tmp_path: Path) -> None:
    """``cat ... | head`` and ``ls -r ... | head``: exit 141 (as a command killed by SIGPIPE),
    nothing on stderr."""
    ok(work, "put", "-", "files:big.bin", input=os.urandom(8 * 1024 * 1024))
    _make_folder(tmp_path / "files" / "many", {f"object-{i:05}.txt": b"." for i in range(3000)})
    for args in (("cat", "files:big.bin"), ("ls", "-r", "files:many")):
        proc = subprocess.Popen(command(*args), cwd=work, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(10)) == 10
        proc.stdout.close()  # as head does once it has its lines
        err = proc.stderr.read()
        assert (proc.wait(timeout=60), err) == (141, b""), args


# ---------------------------------------------------------------------- errors and exit codes


@pytest.mark.parametrize(("args", "message"), [
    (("ls", "nope:x"), "error: unknown backend 'nope' (backends: files, backup)\n"),
    (("cp", "nope:x", "y"), "error: unknown backend 'nope' in 'nope:x' (backends: files, "
                            "backup); write ./nope:x for a local file\n"),
    (("info", "files:a//b"), None),
    (("presign", "files:k", "--expires", "soon"), "error: --expires expects a duration like "
                                                  "90s, 15m, 1h30m or 7d, got 'soon'\n"),
    (("presign", "files:k", "--method", "DELETE"), "error: --method must be GET or PUT, got "
                                                   "'DELETE'\n"),
    (("put", "-", "files:k", "--metadata", "novalue"), "error: --metadata expects NAME=VALUE, "
                                                       "got 'novalue'\n"),
    (("sync", "-", "files:"), "error: sync works on folders and prefixes, not -\n"),
    (("--config", "missing.yaml", "ls"), "error: configuration file not found: missing.yaml\n"),
    (("ls", "--no-such-option"), None),
    (("frobnicate",), None),
])
def test_usage_errors_exit_2(work: Path, args: tuple[str, ...], message: str | None) -> None:
    result = run(work, *args, input=b"")
    assert result.code == 2, result.err
    if message is not None:
        assert result.err == message
    assert result.out == b""


def test_operation_errors_exit_1_with_one_line_naming_backend_and_key(work: Path) -> None:
    result = run(work, "cat", "files:missing/key.txt")
    assert (result.code, result.err) == (1, "error: files: object not found (key 'missing/key.txt')\n")
    result = run(work, "put", "no-such-file", "files:k")
    assert (result.code, result.err) == (1, "error: no-such-file: No such file or directory\n")
    result = run(work, "ls", "backup:nothing")
    assert (result.code, result.err) == (1, "error: backup: object not found (key 'nothing')\n")
    debug = run(work, "--debug", "cat", "files:missing/key.txt")
    assert debug.code == 1
    assert debug.err.startswith("Traceback (most recent call last):")
    assert "StorageFileNotFoundError" in debug.err
    assert debug.err.endswith("error: files: object not found (key 'missing/key.txt')\n")


def test_an_invalid_configuration_exits_2(tmp_path: Path) -> None:
    write_config(tmp_path, [{"name": "files", "driver": "nosuch"}])
    result = run(tmp_path, "ls")
    assert result.code == 2
    assert result.err.startswith("error: invalid 'storage' configuration:")
    assert "unknown driver 'nosuch'" in result.err and result.err.count("\n") == 1
    doctor = run(tmp_path, "doctor", "--json")
    assert doctor.code == 2
    report = json.loads(doctor.out)
    assert report["ok"] is False and report["checks"][0]["name"] == "configuration"


def test_config_option_and_environment(tmp_path: Path) -> None:
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    write_config(elsewhere, [local_backend("docs", tmp_path / "docs")])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ok(cwd, "--config", str(elsewhere / "application.yaml"), "put", "-", "docs:k.txt", input=b"1")
    assert (tmp_path / "docs" / "k.txt").read_bytes() == b"1"
    # no application.yaml: the defaults, overridden by LEX_STORAGE__* as in an application
    env = cli_env(LEX_STORAGE__DRIVERS__LOCAL__ROOT_DIR=str(tmp_path / "from-env"))
    ok(cwd, "put", "-", "k.txt", input=b"2", env=env)
    assert (tmp_path / "from-env" / "k.txt").read_bytes() == b"2"
    assert json.loads(ok(cwd, "backends", "--json", env=env).out)[0]["name"] == "local"


# ---------------------------------------------------------------------- presign, doctor


def test_presign_signs_get_and_put_urls_the_driver_verifies(work: Path, tmp_path: Path) -> None:
    ok(work, "put", "-", "files:p/x.txt", input=b"x")
    verifier = LocalDriver(tmp_path / "files", signing_key="cli-test-key")
    url = ok(work, "presign", "files:p/x.txt", "--expires", "15m").text.strip()
    assert verifier.verify_presigned_url(url) == "p/x.txt"
    put_url = ok(work, "presign", "files:p/new.txt", "--method", "put", "--expires", "1h30m"
                 ).text.strip()
    assert verifier.verify_presigned_url(put_url, "PUT") == "p/new.txt"
    unsigned = run(work, "presign", "backup:p/x.txt")  # no signing_key configured
    assert unsigned.code == 1 and unsigned.err.startswith("error: backup: ")


def test_doctor_passes_then_fails_on_a_broken_backend(work: Path, tmp_path: Path) -> None:
    report = ok(work, "doctor").text.splitlines()
    assert report == [
        "ok   configuration: 2 backend(s): files, backup (default: files)",
        f"ok   backend files: local {tmp_path / 'files'}: " + report[1].rsplit(": ", 1)[1],
        f"ok   backend backup: local {tmp_path / 'backup'}: " + report[2].rsplit(": ", 1)[1],
    ]
    (tmp_path / "blocker").write_text("a file where a folder should be")
    write_config(work, [local_backend("files", tmp_path / "files"),
                        local_backend("broken", tmp_path / "blocker" / "root")])
    result = run(work, "doctor", "--json")
    assert result.code == 1
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert checks["backend files"]["ok"] and not checks["backend broken"]["ok"]
    assert "broken" in checks["backend broken"]["backend"]["name"]
    assert run(work, "doctor").text.splitlines()[2].startswith("FAIL backend broken: local ")


# ---------------------------------------------------------------------- sync


def _make_folder(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def test_sync_copies_only_what_differs_and_deletes_on_request(work: Path, tmp_path: Path) -> None:
    src = work / "site"
    _make_folder(src, {"index.html": b"<h1>hi</h1>", "css/a.css": b"a{}", "img/logo.svg": b"<svg/>"})
    first = json.loads(ok(work, "sync", "site", "files:www", "--json").out)
    assert first == {"copied": ["css/a.css", "img/logo.svg", "index.html"], "deleted": [],
                     "unchanged": 0, "bytes": 20, "failed": {}, "dry_run": False}
    assert tree(tmp_path / "files" / "www") == tree(src)

    # same size, other bytes: the etag tells them apart
    (src / "css" / "a.css").write_bytes(b"b{}")
    (src / "new.txt").write_bytes(b"new")
    (src / "img" / "logo.svg").unlink()
    dry = ok(work, "sync", "site", "files:www", "--delete", "--dry-run").text.splitlines()
    assert dry == ["would copy site/css/a.css -> files:www/css/a.css",
                   "would copy site/new.txt -> files:www/new.txt",
                   "would delete files:www/img/logo.svg",
                   "would copy 2 (6 B), would delete 1, unchanged 1, failed 0"]
    assert (tmp_path / "files" / "www" / "img" / "logo.svg").exists()
    second = ok(work, "sync", "site", "files:www", "--delete").text.splitlines()
    assert second[-1] == "copied 2 (6 B), deleted 1, unchanged 1, failed 0"
    assert tree(tmp_path / "files" / "www") == tree(src)

    # backend -> backend keeps content type and metadata; then back to a local folder
    ok(work, "put", "-", "files:www/meta.json", "-m", "owner=web", input=b"{}")
    ok(work, "sync", "files:www", "backup:", "-j", "2")
    info = json.loads(ok(work, "info", "--json", "backup:meta.json").out)
    assert (info["content_type"], info["metadata"]) == ("application/json", {"owner": "web"})
    ok(work, "sync", "backup:", "copy")
    assert tree(work / "copy") == tree(tmp_path / "files" / "www")
    again = json.loads(ok(work, "sync", "backup:", "copy", "--json").out)
    assert again["copied"] == [] and again["unchanged"] == 4


def test_sync_reports_a_failed_object_and_exits_1(work: Path, tmp_path: Path) -> None:
    src = work / "src"
    _make_folder(src, {"good.txt": b"1", "bad\\name.txt": b"2"})  # a backslash: no valid key
    result = run(work, "sync", "src", "files:", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["copied"] == ["good.txt"] and list(report["failed"]) == ["bad\\name.txt"]
    assert result.err.startswith("error: src/bad\\name.txt -> files:bad\\name.txt: files: ")


def _as_an_ordinary_user() -> None:
    """In the child before exec: as root, give up the capabilities to read and enter any
    folder (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so file permissions apply."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drops root's capabilities "
                                                                  "with Linux's prctl")
def test_sync_delete_keeps_what_an_unreadable_local_folder_may_hold(work: Path,
                                                                    tmp_path: Path) -> None:
    src = work / "src"
    _make_folder(src, {"a.txt": b"a", "sub/b.txt": b"b", "sub/deeper/c.txt": b"c"})
    ok(work, "sync", "src", "files:dst")
    (src / "new.txt").write_bytes(b"new")
    (src / "a.txt").unlink()
    (src / "sub").chmod(0)
    try:
        done = subprocess.run(command("sync", "src", "files:dst", "--delete", "--json"),
                              cwd=work, env=cli_env(), capture_output=True, timeout=120,
                              preexec_fn=_as_an_ordinary_user if os.geteuid() == 0 else None)
    finally:
        (src / "sub").chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode() == "error: src/sub: Permission denied\n"
    report = json.loads(done.stdout)
    assert report["copied"] == ["new.txt"] and report["deleted"] == []
    assert report["failed"] == {"sub/": "Permission denied"}
    assert tree(tmp_path / "files" / "dst") == {"a.txt": b"a", "new.txt": b"new",
                                                "sub/b.txt": b"b", "sub/deeper/c.txt": b"c"}


def test_an_interrupted_sync_leaves_complete_objects_and_a_rerun_finishes(work: Path,
                                                                          tmp_path: Path) -> None:
    src = work / "big"
    _make_folder(src, {f"part-{i:03}.bin": os.urandom(4 * 1024 * 1024) for i in range(48)})
    proc = subprocess.Popen(command("sync", "big", "backup:big", "-j", "1"), cwd=work,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # one object copied: the sync is under way
    assert first.startswith(b"copy ")
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.decode().endswith("error: interrupted\n")
    stored = tree(tmp_path / "backup" / "big")
    assert 1 <= len(stored) < 48  # stopped midway ...
    source = tree(src)
    assert all(source[rel] == data for rel, data in stored.items())  # ... nothing partial
    assert not [p for p in (tmp_path / "backup").rglob("*") if p.is_file() and
                ".lexigram" in p.parts and "staging" in p.parts]
    rerun = json.loads(ok(work, "sync", "big", "backup:big", "--json").out)
    assert rerun["unchanged"] == len(stored) and len(rerun["copied"]) == 48 - len(stored)
    assert tree(tmp_path / "backup" / "big") == source


def test_ctrl_c_ends_a_put_from_stdin_and_a_cat_to_stdout_while_they_wait(work: Path) -> None:
    """Blocked on a pipe whose other end stays open (``sleep 30 | lexigram-storage put -``,
    ``lexigram-storage cat ... | a reader that waits``), the command still ends on Ctrl-C."""
    put = subprocess.Popen(command("put", "-", "files:x"), cwd=work, env=cli_env(),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert put.stdin is not None
    for _ in range(4):  # far more than a pipe buffers: the command is reading its stdin
        put.stdin.write(os.urandom(1024 * 1024))
        put.stdin.flush()
    ok(work, "put", "-", "files:big.bin", input=os.urandom(8 * 1024 * 1024))
    cat = subprocess.Popen(command("cat", "files:big.bin"), cwd=work, env=cli_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cat.stdout is not None
    assert len(cat.stdout.read(1024)) == 1024  # writing, and now blocked on the full pipe
    try:
        for proc in (put, cat):
            proc.send_signal(2)  # SIGINT, as Ctrl-C
            assert proc.stderr is not None
            assert proc.wait(timeout=60) == 130
            assert proc.stderr.read() == b"error: interrupted\n"
    finally:
        for proc in (put, cat):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert run(work, "info", "files:x").code == 1  # the upload stored nothing


# Runs `python -m lexigram_storage ARGS` and writes the process's peak RSS (VmHWM, in KiB) to
# the file named by its first argument. VmHWM, not getrusage: the kernel carries the RSS peak
# of the process before exec (the forked pytest) into ru_maxrss.
PEAK_RSS = """\
import runpy, sys
report = sys.argv.pop(1)
sys.argv[0] = "lexigram_storage"
try:
    runpy.run_module("lexigram_storage", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(report, "w") as out:
        out.write(peak)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_sync_of_a_big_file_runs_in_bounded_memory(work: Path, tmp_path: Path) -> None:
    """A 1 GiB file (sparse: no disk space for its source) goes folder -> backend -> folder;
    the process's peak RSS stays far below the file's size."""
    src = work / "huge"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.truncate(1024 ** 3)
        f.seek(512 * 1024 ** 2)
        f.write(b"middle")  # not only zeros
    peaks = []
    for args in (("sync", "huge", "files:huge"), ("sync", "files:huge", "back")):
        report = tmp_path / "peak"
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(report), *args, "-j", "2"],
                              cwd=work, env=cli_env(), capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr
        peaks.append(int(report.read_text()) // 1024)  # MiB
    assert max(peaks) < 150, f"peak RSS {peaks} MiB for a 1024 MiB file"
    assert (work / "back" / "disk.img").stat().st_size == 1024 ** 3
    with open(work / "back" / "disk.img", "rb") as f:
        f.seek(512 * 1024 ** 2)
        assert f.read(6) == b"middle"


# ---------------------------------------------------------------------- progress


def _on_a_terminal(work: Path, *args: str) -> str:
    """Run the command with stderr on a pseudo-terminal; what it drew there."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(command(*args), cwd=work, env=cli_env(COLUMNS="160"),
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    return drawn.decode(errors="replace")


def test_progress_bars_only_on_a_terminal(work: Path) -> None:
    (work / "f.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    piped = ok(work, "put", "f.bin", "files:f.bin")
    assert piped.err == ""
    screen = _on_a_terminal(work, "cp", "files:f.bin", "backup:f.bin")
    assert "files:f.bin -> backup:f.bin" in screen and "2.0/2.0 MiB" in screen, screen
    screen = _on_a_terminal(work, "put", "f.bin", "backup:put.bin")  # read by the driver
    assert "f.bin -> backup:put.bin" in screen and "2.0/2.0 MiB" in screen, screen
    (work / "tree" / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/c"):
        (work / "tree" / name).write_bytes(os.urandom(300_000))
    screen = _on_a_terminal(work, "sync", "tree", "backup:tree")
    assert "sync" in screen and "3/3 objects" in screen and "878.9/878.9 KiB" in screen, screen
    assert "copy tree/a" not in screen  # stdout (here not the terminal) is not redirected
    assert ok(work, "sync", "tree", "files:tree").err == ""


def test_the_console_script_target_runs_the_same_commands(work: Path) -> None:
    ok(work, "put", "-", "files:k", input=b"v")
    done = subprocess.run(
        [sys.executable, "-c", "from lexigram_storage.cli.app import main; main()", "cat", "files:k"],
        cwd=work, env=cli_env(), capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"v")
    help_text = subprocess.run(
        [sys.executable, "-c", "from lexigram_storage.cli.app import main; main()", "--help"],
        cwd=work, env=cli_env(), capture_output=True, text=True, timeout=60).stdout
    assert "Usage: lexigram-storage" in help_text
    assert (ROOT / "lexigram_storage" / "__main__.py").exists()


def test_without_the_cli_extra_the_command_names_it(work: Path) -> None:
    code = ("import runpy, sys; sys.modules['typer'] = None; sys.argv = ['x', 'ls']; "
            "runpy.run_module('lexigram_storage', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ('error: the storage command line needs typer: '
                           'pip install "lexigram_storage[cli]"\n')
