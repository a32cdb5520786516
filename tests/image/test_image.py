"""The container image, built for real where a Docker engine can start: on a Debian base made
locally with mmdebstrap (no registry is needed or reached), passed as BASE_IMAGE, with the Python
dependencies served from a wheelhouse on 127.0.0.1. Then `nodeaudit --help` and
`nodeaudit validate examples/procmon.yaml` run in it, as the operator's uid on a read-only root,
and the tools the node Job needs are there.

The test starts its own dockerd (own data root and socket, no bridge, no iptables changes, so the
host network is left alone) and stops it, by PID, at the end. Skipped with the reason where
dockerd or mmdebstrap is missing or the engine cannot start or run a container.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nodeaudit
from tests import REPO

BASE_TAG = "nodeaudit-base:test"
IMAGE_TAG = "nodeaudit:test"
SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("NODEAUDIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")

pytestmark = pytest.mark.slow


def _cache_dir() -> Path:
    base = os.environ.get("NODEAUDIT_CACHE_DIR")
    path = (Path(base) if base else REPO / ".cache") / "rootfs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _base_tarball() -> Path:
    """Debian bookworm minbase with python3 and python3-venv: a 'Debian python' base image.
    (util-linux and coreutils, hence nsenter and chroot, are essential packages: always there.)"""
    out = _cache_dir()
    target = out / f"docker-base-{SUITE}-python3.tar"
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            partial = out / f".{target.name}.{os.getpid()}.partial.tar"
            cmd = ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv", SUITE,
                   str(partial), f"deb {DEBIAN_MIRROR} {SUITE} main",
                   f"deb {DEBIAN_MIRROR}-security {SUITE}-security main"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                partial.unlink(missing_ok=True)
                pytest.skip(f"mmdebstrap could not build the base ({proc.returncode}): {proc.stderr[-500:]}")
            os.replace(partial, target)
    return target


class Engine:
    """A private dockerd: started here, stopped here by its PID (and its containerd's)."""

    def __init__(self) -> None:
        # Short path: the UNIX socket path must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="nad-docker-", dir="/tmp"))
        self.sock = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_BUILDKIT": "0",
                    "DOCKER_CONFIG": str(self.root / "client")}

    def start(self) -> str | None:
        """None when the engine runs, else why not."""
        cmd = ["dockerd", "--host", f"unix://{self.sock}", "--data-root", str(self.root / "data"),
               "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "dockerd.pid"),
               # Leave the host network exactly as it is: no docker0, no NAT, no forwarding change.
               "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"dockerd exited ({self.proc.returncode}): {self.log.read_text()[-600:]}"
            if self.sock.exists() and self.docker("info", check=False, timeout=20).returncode == 0:
                return None
            time.sleep(0.5)
        return f"dockerd did not answer within 60 s: {self.log.read_text()[-600:]}"

    def docker(self, *args: str, check: bool = True, timeout: float = 600, stdin: bytes | None = None,
               ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["docker", *args], env=self.env, capture_output=True, timeout=timeout,
                              input=stdin.decode() if stdin is not None else None, text=True)
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)} ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def stop(self) -> None:
        if self.proc is None:
            return
        containerd_pid = None
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        if pidfile.exists():
            try:
                containerd_pid = int(pidfile.read_text().strip())
            except ValueError:
                containerd_pid = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if containerd_pid is not None:  # dockerd stops its containerd; make sure, by that PID only
            with contextlib.suppress(ProcessLookupError):
                os.kill(containerd_pid, signal.SIGTERM)
        # dockerd leaves mounts under its roots (exec/netns/default, overlays): unmount ours only.
        for mountpoint in reversed(self._mounts_below_root()):
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def _mounts_below_root(self) -> list[str]:
        prefix = str(self.root) + "/"
        mounts = []
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                mountpoint = line.split()[4].replace("\\040", " ")
                if mountpoint.startswith(prefix):
                    mounts.append(mountpoint)
        return mounts


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.skip("no Docker engine here (apt-get install docker.io gives dockerd and docker)")
    if os.geteuid() != 0:
        pytest.skip("starting a private dockerd needs root")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is needed to make the Debian base image locally (no registry)")
    eng = Engine()
    try:
        why = eng.start()
        if why is not None:
            pytest.skip(f"Docker engine cannot start here: {why}")
        yield eng
    finally:
        eng.stop()


@functools.cache
def _wheelhouse() -> Path:
    """nodeaudit's dependencies (and its build backend) as files, fetched by the host's pip."""
    out = Path(tempfile.mkdtemp(prefix="nad-wheels-", dir="/tmp"))
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(out),
                           "--constraint", str(REPO / "constraints.txt"),
                           str(REPO), "setuptools>=68", "wheel"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"pip could not fetch the dependencies: {proc.stderr[-500:]}")
    for built in out.glob("nodeaudit-*"):  # the project itself comes from the build context
        built.unlink()
    return out


@pytest.fixture(scope="module")
def image(engine: Engine) -> Iterator[str]:
    base = _base_tarball()
    with open(base, "rb") as tar:
        proc = subprocess.run(["docker", "import", "-", BASE_TAG], env=engine.env, stdin=tar,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    probe = engine.docker("run", "--rm", "--network", "none", BASE_TAG, "true", check=False, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"the engine starts but cannot run a container: {probe.stderr.strip()[-500:]}")

    wheels = _wheelhouse()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheels))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        engine.docker("build", "--network", "host", "--tag", IMAGE_TAG,
                      "--build-arg", f"BASE_IMAGE={BASE_TAG}",
                      "--build-arg", "PIP_NO_INDEX=1",
                      "--build-arg", f"PIP_FIND_LINKS=http://127.0.0.1:{port}/",
                      "--build-arg", "REVISION=test",
                      "--build-arg", f"VERSION={nodeaudit.__version__}",
                      str(REPO), timeout=1200)
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(wheels, ignore_errors=True)
        _wheelhouse.cache_clear()
    yield IMAGE_TAG


def _run(engine: Engine, image: str, *args: str, user: str | None = None, entrypoint: str | None = None,
         volumes: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess[str]:
    # As the Deployment runs it: read-only root, a tmpfs /tmp, no network, all capabilities dropped.
    cmd = ["run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges"]
    if user is not None:
        cmd += ["--user", user]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    for volume in volumes:
        cmd += ["--volume", volume]
    return engine.docker(*cmd, image, *args, check=check, timeout=120)


def test_help_runs_as_the_non_root_user(engine: Engine, image: str) -> None:
    config = json.loads(engine.docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["nodeaudit"] and config["Cmd"] == ["run"]
    assert config["Labels"]["org.opencontainers.image.title"] == "nodeaudit"
    assert config["Labels"]["org.opencontainers.image.revision"] == "test"
    result = _run(engine, image, "--help")
    for command in ("run", "validate", "render", "crd"):
        assert command in result.stdout
    assert config["Labels"]["org.opencontainers.image.version"] == nodeaudit.__version__
    assert _run(engine, image, "--version").stdout.strip().endswith(nodeaudit.__version__)
    ident = _run(engine, image, "-c", "id -u", entrypoint="sh").stdout.strip()
    assert ident == "10001"


def test_validate_an_example_policy(engine: Engine, image: str) -> None:
    result = _run(engine, image, "validate", "/examples/procmon.yaml",
                  volumes=(f"{REPO / 'examples'}:/examples:ro",))
    assert "1 valid, 0 problem(s)" in result.stdout + result.stderr, result.stdout + result.stderr


def test_render_writes_only_to_tmp(engine: Engine, image: str) -> None:
    result = _run(engine, image, "-c", "nodeaudit render /examples/procmon.yaml -o /tmp/b && ls /tmp/b",
                  entrypoint="sh", volumes=(f"{REPO / 'examples'}:/examples:ro",))
    assert "apply.sh" in result.stdout.split() and "bundle.json" in result.stdout.split()


def test_the_node_job_tools_are_there_for_root(engine: Engine, image: str) -> None:
    result = _run(engine, image, "-c", "for t in sh cp nsenter chroot; do command -v $t || exit 1; done; id -u",
                  user="0", entrypoint="sh")
    lines = result.stdout.split()
    assert len(lines) == 5 and lines[-1] == "0", result.stdout
    # The bundle's shell scripts ship in the package (the Job copies them to the host).
    found = _run(engine, image, "-c",
                 "ls \"$(python3 -c 'import nodeaudit, os; print(os.path.dirname(nodeaudit.__file__))')/host\"",
                 entrypoint="sh")
    assert "apply.sh" in found.stdout.split()
