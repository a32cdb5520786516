"""The Job and ConfigMap manifests that carry a bundle onto a node.

Why a pure module: the Job is the one privileged thing nodeaudit creates, so its every field
(pinning, privileges, tolerations, limits, names) is decided here, in one reviewable function,
and tested as data. Nothing from the policy reaches a command line: the container runs the
shipped ``job-entry.sh`` from the bundle ConfigMap, which reads everything else from files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

LABEL_POLICY = "nodeaudit.io/policy"
LABEL_NODE = "nodeaudit.io/node"
LABEL_BUNDLE = "nodeaudit.io/bundle"
LABEL_ACTION = "nodeaudit.io/action"
LABEL_BUDGET = "nodeaudit.io/budget"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_RUN_KEY = "nodeaudit.io/run-key"
ANNOTATION_REASON = "nodeaudit.io/reason"
ANNOTATION_BUNDLE = "nodeaudit.io/bundle-hash"
CONFIGMAP_PREFIX = "nodeaudit-bundle-"
ENTRY_SCRIPT = "job-entry.sh"

ACTIVE_DEADLINE_SECONDS = 900
BACKOFF_LIMIT = 0  # the operator retries (with its own backoff and bound), not the Job controller
TTL_SECONDS_AFTER_FINISHED = 3600
RESOURCES = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}

Action = Literal["apply", "remove"]


class _Bundle(Protocol):
    @property
    def hash(self) -> str: ...
    @property
    def hex(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def files(self) -> Mapping[str, bytes]: ...


def bundle_label(bundle_hash: str) -> str:
    """The bundle hash as a label value (<= 63 chars): its first 32 hex digits."""
    return bundle_hash.split(":", 1)[-1][:32]


def configmap_name(bundle_hash: str) -> str:
    return CONFIGMAP_PREFIX + bundle_hash.split(":", 1)[-1][:16]


def _label_safe(text: str, limit: int) -> str:
    text = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")
    return text[:limit].strip("-")


def job_name(policy_name: str, node_name: str, action: Action, run_key: str) -> str:
    """Deterministic and unique per run: a restarted operator computes the same name (409, no duplicate).

    Readable prefix (action, policy, node tail) plus 10 hex digits of a digest over everything.
    Kept <= 63 characters so the Job controller's ``job-name`` pod label stays valid.
    """
    digest = hashlib.sha256(f"{policy_name}\0{node_name}\0{action}\0{run_key}".encode()).hexdigest()[:10]
    prefix = "na-" + ("a" if action == "apply" else "r")
    policy_part = _label_safe(policy_name, 16)
    node_part = _label_safe(node_name[-24:], 24)
    return f"{prefix}-{policy_part}-{node_part}-{digest}".replace("--", "-")[:63]


def configmap_manifest(bundle: _Bundle, namespace: str) -> dict[str, Any]:
    """One ConfigMap per bundle hash, shared by every Job of that bundle; immutable."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    import base64

    for name, content in sorted(bundle.files.items()):
        try:
            data[name] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[name] = base64.b64encode(content).decode()
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(bundle.hash),
            "namespace": namespace,
            "labels": {LABEL_POLICY: bundle.policy, LABEL_BUNDLE: bundle_label(bundle.hash),
                       LABEL_COMPONENT: "bundle", LABEL_MANAGED_BY: "nodeaudit"},
            "annotations": {ANNOTATION_BUNDLE: bundle.hash},
        },
        "immutable": True,
        "data": data,
    }
    if binary:
        manifest["binaryData"] = binary
    return manifest


def job_manifest(
    *,
    policy_name: str,
    policy_uid: str,
    node_name: str,
    bundle_hash: str,
    image: str,
    namespace: str,
    action: Action,
    run_key: str = "",
    reason: str = "",
    budget: str = "update",
    owner_api_version: str = "nodeaudit.io/v1alpha1",
    owner_kind: str = "NodeAuditPolicy",
) -> dict[str, Any]:
    """The privileged, node-pinned Job that runs the bundle's entry point inside the host."""
    name = job_name(policy_name, node_name, action, run_key or bundle_hash)
    labels = {
        LABEL_POLICY: policy_name,
        LABEL_NODE: _label_safe(node_name, 63) if len(node_name) > 63 else node_name,
        LABEL_BUNDLE: bundle_label(bundle_hash),
        LABEL_ACTION: action,
        LABEL_BUDGET: budget,
        LABEL_COMPONENT: "node-job",
        LABEL_MANAGED_BY: "nodeaudit",
    }
    annotations = {ANNOTATION_RUN_KEY: run_key, ANNOTATION_REASON: reason, ANNOTATION_BUNDLE: bundle_hash}
    args = ["sh", f"/bundle/{ENTRY_SCRIPT}"] + (["--remove"] if action == "remove" else [])
    pod_spec: dict[str, Any] = {
        "nodeName": node_name,
        "hostPID": True,
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "priorityClassName": "system-node-critical",
        "terminationGracePeriodSeconds": 30,
        "tolerations": [{"operator": "Exists"}],
        "containers": [{
            "name": "nodeaudit",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": args,
            "securityContext": {"privileged": True, "runAsUser": 0},
            # the node's name for apply.sh's canary marker (the host's hostname may differ from it)
            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "resources": json.loads(json.dumps(RESOURCES)),
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [
                {"name": "host", "mountPath": "/host"},
                {"name": "bundle", "mountPath": "/bundle", "readOnly": True},
            ],
        }],
        "volumes": [
            {"name": "host", "hostPath": {"path": "/", "type": "Directory"}},
            {"name": "bundle", "configMap": {"name": configmap_name(bundle_hash), "defaultMode": 0o555}},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": owner_api_version, "kind": owner_kind, "name": policy_name,
                "uid": policy_uid, "controller": True, "blockOwnerDeletion": False,
            }],
        },
        "spec": {
            "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
            "backoffLimit": BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {ANNOTATION_BUNDLE: bundle_hash}},
                "spec": pod_spec,
            },
        },
    }


def job_outcome(job: Mapping[str, Any]) -> Literal["running", "succeeded", "failed"]:
    """A Job's state from its status conditions (Complete / Failed) and counters."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return "running"


def job_finished_time(job: Mapping[str, Any]) -> str | None:
    """When a finished Job finished (API time): ``status.completionTime``, else the time its
    Complete/Failed condition turned True; None while it runs or when the API said neither."""
    status = job.get("status") or {}
    if status.get("completionTime"):
        return str(status["completionTime"])
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in (
                "Complete", "SuccessCriteriaMet", "Failed", "FailureTarget") and cond.get("lastTransitionTime"):
            return str(cond["lastTransitionTime"])
    return None


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The JSON result line (CONTRACTS.md) from a termination message: its last JSON-object line."""
    if not message:
        return None
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed
    return None


def pod_result(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result line from a Job pod's terminated container state."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        parsed = parse_result(terminated.get("message"))
        if parsed is not None:
            return parsed
    return None


@dataclass(frozen=True)
class JobInfo:
    """What the controller keeps of one of its Jobs (from the Job's labels, annotations and status)."""

    name: str
    policy: str
    node: str
    action: str
    budget: str
    bundle: str
    outcome: str  # running | succeeded | failed
    created: float  # monotonic time first seen
    finished_at: float | None = None
    # When the Job finished, as the API says (status.completionTime, or the Failed condition's
    # lastTransitionTime): after a restart it orders finished Jobs against each other and against
    # the node's record, so an older Job never overwrites a newer result.
    finished: str | None = None


def job_info(job: Mapping[str, Any], previous: JobInfo | None, now: float) -> JobInfo | None:
    """The JobInfo of a Job object (None: not one of ours). ``previous`` is what was known of it,
    ``now`` the monotonic clock: a Job keeps the time it was first seen and first seen finished."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    policy = labels.get(LABEL_POLICY)
    if not policy:
        return None
    outcome = job_outcome(job)
    spec_node = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("nodeName")
    return JobInfo(
        name=str(meta.get("name", "")), policy=str(policy), node=str(spec_node or labels.get(LABEL_NODE, "")),
        action=str(labels.get(LABEL_ACTION, "apply")), budget=str(labels.get(LABEL_BUDGET, "update")),
        bundle=str((meta.get("annotations") or {}).get(ANNOTATION_BUNDLE, "")),
        outcome=outcome, created=previous.created if previous else now,
        finished_at=(previous.finished_at if previous and previous.finished_at else
                     (now if outcome != "running" else None)),
        finished=job_finished_time(job) if outcome != "running" else None,
    )


def unused_configmaps(existing: Iterable[str], bundles: Iterable[str], jobs: Iterable[JobInfo]) -> list[str]:
    """The bundle ConfigMaps in ``existing`` that neither a policy's current bundle (``bundles``:
    hashes) nor a running Job needs: safe to delete."""
    keep = {configmap_name(h) for h in bundles}
    keep |= {configmap_name(j.bundle) for j in jobs if j.outcome == "running" and j.bundle}
    return [name for name in existing if name not in keep]
