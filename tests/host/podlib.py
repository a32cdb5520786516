"""A pod as kubelet (systemd cgroup driver) and containerd lay it out on a node, for the host tests
and benches of the JSON dispatcher: a kubepods pod slice with a cri-containerd scope in this
machine's cgroup hierarchy (removed after), and the container's task state in a root."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.host import hostlib

CGROUP_ROOT = Path("/sys/fs/cgroup")
TASKS = "run/containerd/io.containerd.runtime.v2.task/k8s.io"


class CgroupUnavailable(RuntimeError):
    pass


class KubeletCgroup:
    """A pod slice and a cri-containerd scope in every hierarchy that takes one here (cgroup v1
    `pids` and `name=systemd`, or the v2 unified tree); only what this made is removed."""

    def __init__(self, pod_uid: str, container_id: str):
        pod = pod_uid.replace("-", "_")
        rel = (f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod}.slice/"
               f"cri-containerd-{container_id}.scope")
        if (CGROUP_ROOT / "cgroup.procs").exists():  # pure v2
            bases = [CGROUP_ROOT]
        else:
            bases = [CGROUP_ROOT / c for c in ("pids", "systemd") if (CGROUP_ROOT / c / "cgroup.procs").exists()]
        if not bases:
            raise CgroupUnavailable("no writable cgroup hierarchy for a kubepods slice here")
        self.leaves = [base / rel for base in bases]
        self.created: list[Path] = []
        for base in bases:
            directory = base
            for part in Path(rel).parts:
                directory = directory / part
                if not directory.exists():
                    directory.mkdir()
                    self.created.append(directory)

    def join(self) -> None:
        """preexec_fn: the child moves itself in before it execs (as runc puts the container's init)."""
        for leaf in self.leaves:
            (leaf / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        for leaf in self.leaves:
            pids = [int(p) for p in (leaf / "cgroup.procs").read_text().split()] if leaf.exists() else []
            hostlib.kill_pids(pids)
        for directory in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def write_task_state(root: hostlib.Rootfs, container_id: str, pod_uid: str) -> dict[str, str]:
    want = {"name": "web", "pod": "shop-web-7d4b9c-x2x9q", "namespace": "shop", "podUid": pod_uid,
            "image": "ghcr.io/acme/shop-web:1.4.2"}
    directory = root / f"{TASKS}/{container_id}"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({
        "ociVersion": "1.1.0",
        "process": {"args": ["/bin/sh"]},
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": want["name"],
            "io.kubernetes.cri.sandbox-name": want["pod"],
            "io.kubernetes.cri.sandbox-namespace": want["namespace"],
            "io.kubernetes.cri.sandbox-uid": pod_uid,
            "io.kubernetes.cri.sandbox-id": "b" * 64,
            "io.kubernetes.cri.image-name": want["image"],
        },
    }))
    return want
