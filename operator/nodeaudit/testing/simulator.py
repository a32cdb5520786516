"""Simulated AKS nodes, kubelet and Job controller for the local API server.

Why: with no real cluster here, something has to play the parts the operator relies on: Nodes
with realistic labels/providerIDs/bootIDs, and a Job controller + kubelet that turn a Job into a
Pod whose container terminates with the bundle's JSON result line, then mark the Job Complete or
Failed. It runs inside the API server's event loop and writes to the store directly (it is the
cluster, not a client), so its writes never count as the operator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodeaudit.testing.apiserver import ApiError, ApiServer

NODES: tuple[str, str, str] = ("", "v1", "nodes")
JOBS: tuple[str, str, str] = ("batch", "v1", "jobs")
PODS: tuple[str, str, str] = ("", "v1", "pods")
CONFIGMAPS: tuple[str, str, str] = ("", "v1", "configmaps")
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
NODE_RG = "mc_rg-demo_aks-demo_westeurope"


def _now() -> str:
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def aks_node(pool: str, index: int, *, mode: str = "user", os_name: str = "linux", ready: bool = True,
             taints: list[dict[str, str]] | None = None, vmss_suffix: str = "12345678",
             image: str = "AKSUbuntu-2204gen2containerd-202410.09.0") -> dict[str, Any]:
    """A Node as AKS registers it (VMSS node pool)."""
    vmss = f"aks-{pool}-{vmss_suffix}-vmss"
    name = f"{vmss}{index:06x}" if os_name == "linux" else f"aks{pool[:6]}{index:06d}"
    labels = {
        "kubernetes.io/os": os_name, "beta.kubernetes.io/os": os_name,
        "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
        "node.kubernetes.io/instance-type": "Standard_D4s_v5",
        "topology.kubernetes.io/region": "westeurope", "topology.kubernetes.io/zone": f"westeurope-{index % 3 + 1}",
        "agentpool": pool, "kubernetes.azure.com/agentpool": pool, "kubernetes.azure.com/mode": mode,
        "kubernetes.azure.com/cluster": NODE_RG.upper(), "kubernetes.azure.com/role": "agent",
        "kubernetes.azure.com/node-image-version": image if os_name == "linux" else "AKSWindows-2022-containerd",
        "kubernetes.azure.com/os-sku": "Ubuntu" if os_name == "linux" else "Windows2022",
    }
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {
            "providerID": (f"azure:///subscriptions/{SUBSCRIPTION}/resourceGroups/{NODE_RG}/providers/"
                           f"Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/{index}"),
            "taints": list(taints or []),
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
            "nodeInfo": {"bootID": str(uuid.uuid4()), "machineID": uuid.uuid4().hex,
                         "osImage": "Ubuntu 22.04.5 LTS" if os_name == "linux" else "Windows Server 2022 Datacenter",
                         "kernelVersion": "5.15.0-1073-azure", "containerRuntimeVersion": "containerd://1.7.22-1",
                         "kubeletVersion": "v1.30.5", "kubeProxyVersion": "v1.30.5", "systemUUID": str(uuid.uuid4()),
                         "operatingSystem": os_name, "architecture": "amd64"},
            "addresses": [{"type": "InternalIP", "address": f"10.224.{index // 250}.{index % 250 + 4}"},
                          {"type": "Hostname", "address": name}],
        },
    }


def virtual_node() -> dict[str, Any]:
    """The ACI virtual node AKS adds with the virtual-nodes add-on."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "virtual-node-aci-linux", "labels": {
            "kubernetes.io/os": "linux", "kubernetes.io/role": "agent", "type": "virtual-kubelet",
            "kubernetes.azure.com/managed": "false", "alpha.service-controller.kubernetes.io/exclude-balancer": "true"}},
        "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": "azure", "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "nodeInfo": {"bootID": "", "machineID": "", "systemUUID": "", "kernelVersion": "",
                                "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "v1.30.5-vk-azure-aci",
                                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}},
    }


@dataclass
class NodeSimulator:
    """Plays kubelet and the Job controller for the operator's Jobs."""

    server: ApiServer
    delay: float = 0.05
    jitter: float = 0.0
    fail_nodes: set[str] = field(default_factory=set)
    fail_times: dict[str, int] = field(default_factory=dict)
    hold: bool = False
    ttl_delete: bool = False
    outcome: Callable[[str, dict[str, Any]], bool] | None = None
    real_run: Callable[[dict[str, str], bool], tuple[int, str]] | None = None
    """Runs a bundle for real (``demo --real-host``): (ConfigMap files, remove) → (exit code,
    termination message). Blocking; called in a worker thread for the nodes in ``real_nodes``."""
    real_nodes: set[str] = field(default_factory=set)
    on_canary: Callable[[str, str, int], None] | None = None
    """Called with (node, canary id, time) for every simulated apply's canary: what the node's
    agent would ship (the demo hands it to its Log Analytics emulator)."""
    distro: str = "ubuntu-22.04"
    audit_version: str = "3.0.7"
    started: int = 0
    history: list[tuple[str, str, bool]] = field(default_factory=list)
    """(node, action, ok) of every finished Job, in order."""
    running: int = 0
    peak_running: int = 0
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def attach(self) -> NodeSimulator:
        self.server.listeners.append(self._on_event)
        return self

    def detach(self) -> None:
        if self._on_event in self.server.listeners:
            self.server.listeners.remove(self._on_event)
        for t in self._tasks:
            t.cancel()

    def release(self) -> None:
        self.hold = False
        self._released.set()

    def _on_event(self, res: tuple[str, str, str], kind: str, obj: dict[str, Any]) -> None:
        if res == JOBS and kind == "ADDED":
            task = asyncio.get_running_loop().create_task(self._run_job(obj))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _ok(self, node: str, job: dict[str, Any]) -> bool:
        if self.outcome is not None:
            return self.outcome(node, job)
        if node in self.fail_nodes:
            return False
        if self.fail_times.get(node, 0) > 0:
            self.fail_times[node] -= 1
            return False
        return True

    async def _run_job(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        pod_spec = job["spec"]["template"]["spec"]
        node = pod_spec.get("nodeName", "")
        self.started += 1
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        real = self.real_run is not None and node in self.real_nodes
        try:
            if not real:
                await asyncio.sleep(self.delay + random.random() * self.jitter)
            while self.hold:
                self._released.clear()
                await self._released.wait()
            if self.server.get(JOBS, ns, name) is None:
                return
            action = (job["metadata"].get("labels") or {}).get("nodeaudit.io/action", "apply")
            if real:
                ok, message = await self._run_real(ns, pod_spec, action)
            else:
                ok = self._ok(node, job)
                bundle = (job["metadata"].get("annotations") or {}).get("nodeaudit.io/bundle-hash", "")
                result = {"ok": ok, "bundle": bundle, "policy": meta["labels"].get("nodeaudit.io/policy"),
                          "action": action, "distro": self.distro, "auditVersion": self.audit_version,
                          "rulesLoaded": 2 if ok else 0, "installed": True, "restarted": False, "lost": 0,
                          "backlog": 0, "message": "auditd running, rules loaded" if ok else
                          "augenrules --load failed: rule 1: Invalid argument"}
                if ok and action == "apply":  # apply.sh's canary: node:bundle:time
                    at = int(time.time())
                    result.update(canaryId=f"{node}:{bundle.removeprefix('sha256:')[:12]}:{at}-{self.started}", canaryAt=at,
                                  canarySeen="journal")
                    if self.on_canary is not None:
                        self.on_canary(node, str(result["canaryId"]), at)
                message = json.dumps(result) + "\n"
            self.history.append((node, action, ok))
            labels = dict(job["spec"]["template"]["metadata"].get("labels") or {})
            labels.update({"batch.kubernetes.io/job-name": name, "job-name": name,
                           "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"]})
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": f"{name}-", "namespace": ns, "labels": labels,
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                  "uid": meta["uid"], "controller": True}]},
                "spec": pod_spec,
                "status": {"phase": "Succeeded" if ok else "Failed", "containerStatuses": [{
                    "name": "nodeaudit", "ready": False, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0 if ok else 1,
                                             "reason": "Completed" if ok else "Error",
                                             "message": message}}}]},
            }
            self.server.put_object(PODS, ns, pod)
            now = _now()
            cond = ({"type": "Complete", "status": "True", "lastTransitionTime": now} if ok else
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now})
            status = {"startTime": now, "completionTime": now if ok else None, "conditions": [cond],
                      "succeeded": 1 if ok else 0, "failed": 0 if ok else 1, "active": 0}
            try:
                self.server.patch_object(JOBS, ns, name, {"status": status}, subresource="status")
            except ApiError:
                return
        finally:
            self.running -= 1
        if self.ttl_delete:
            await asyncio.sleep(1.0)
            with contextlib.suppress(ApiError):
                self.server.delete_object(JOBS, ns, name)

    async def _run_real(self, ns: str, pod_spec: dict[str, Any], action: str) -> tuple[bool, str]:
        """The Job's container for real: its bundle ConfigMap through job-entry.sh on a real root."""
        assert self.real_run is not None
        volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
        cm_name = ((volumes.get("bundle") or {}).get("configMap") or {}).get("name", "")
        cm = self.server.get(CONFIGMAPS, ns, cm_name)
        if cm is None:  # the kubelet would keep the Pod in ContainerCreating; fail it here
            return False, json.dumps({"ok": False, "action": action,
                                      "message": f"configmap {cm_name} not found"}) + "\n"
        files = dict(cm.get("data") or {})
        run = self.real_run
        rc, message = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run(files, action == "remove"))
        return rc == 0, message  # the Job controller judges by the exit code, as Kubernetes does

    # -- node lifecycle ---------------------------------------------------------------------

    def reboot(self, node: str) -> str:
        boot = str(uuid.uuid4())
        self.server.patch_object(NODES, None, node, {"status": {"nodeInfo": {"bootID": boot}}}, subresource="status")
        return boot

    def reimage(self, node: str) -> None:
        """A reimaged VMSS instance re-registers: a new Node object (new uid), same name."""
        old = self.server.get(NODES, None, node)
        assert old is not None
        fresh = json.loads(json.dumps(old))
        fresh["metadata"] = {k: v for k, v in fresh["metadata"].items()
                             if k in ("name", "labels")}
        fresh["status"]["nodeInfo"]["bootID"] = str(uuid.uuid4())
        self.server.delete_object(NODES, None, node)
        self.server.put_object(NODES, None, fresh)
