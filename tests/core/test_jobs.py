"""The pure Job and ConfigMap manifests and the results read back from them."""

from __future__ import annotations

from nodeaudit.core import jobs
from tests.core.builders import H


def test_job_manifest_is_safe_and_pinned() -> None:
    m = jobs.job_manifest(policy_name="procmon", policy_uid="u", node_name="aks-user1-12345678-vmss000000",
                          bundle_hash=H, image="img:1", namespace="nodeaudit-system", action="apply", run_key="k")
    assert len(m["metadata"]["name"]) <= 63
    assert m["metadata"]["name"] == jobs.job_name("procmon", "aks-user1-12345678-vmss000000", "apply", "k")
    pod = m["spec"]["template"]["spec"]
    assert pod["nodeName"] == "aks-user1-12345678-vmss000000" and pod["hostPID"]
    assert pod["containers"][0]["command"] == ["sh", "/bundle/job-entry.sh"]
    assert "procmon" not in " ".join(pod["containers"][0]["command"])
    # The environment passes through nsenter into apply.sh, where NODEAUDIT_HOST_ROOT is a test-only prefix.
    assert not [e for e in pod["containers"][0].get("env", []) if e["name"].startswith("NODEAUDIT_")]
    assert m["metadata"]["labels"]["nodeaudit.io/bundle"] == "ab" * 16
    r = jobs.job_manifest(policy_name="procmon", policy_uid="u", node_name="n", bundle_hash=H, image="i",
                          namespace="ns", action="remove", run_key="k")
    assert r["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--remove"


def test_configmap_and_results() -> None:
    class B:
        hash, hex, policy = H, "ab" * 32, "procmon"
        files = {"apply.sh": b"#!/bin/sh\n", "blob": b"\xff\x00"}
    cm = jobs.configmap_manifest(B(), "ns")
    assert cm["metadata"]["name"] == "nodeaudit-bundle-" + "ab" * 8
    assert cm["data"]["apply.sh"] and cm["binaryData"]["blob"] == "/wA="
    assert jobs.parse_result('installing\n{"ok": true, "bundle": "x"}\n') == {"ok": True, "bundle": "x"}
    assert jobs.parse_result("garbage") is None
    assert jobs.job_outcome({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "failed"
