"""deploy/ (kustomize): renders offline, validates against the Kubernetes schemas, least-privilege
RBAC without wildcards, the operator's security context, the namespace's Pod Security labels, the
workload-identity overlay, and the example policies kept equal to examples/."""

from __future__ import annotations

import functools
import re
import subprocess
from typing import Any

import pytest
import yaml

from tests import REPO
from tests.kustomize import needs_kustomize
from tests.rbac import Request, allowed_by, grants_for, verb_of

DEPLOY = REPO / "deploy"
CRD_FILE = REPO / "crds" / "nodeauditpolicy.yaml"
NAMESPACE = "nodeaudit-system"
SA = "nodeaudit-operator"
AMA_ROLE = "nodeaudit-operator-ama-logs"
# Kubernetes versions to validate against (schemas shipped with kubernetes-validate; AKS-supported).
K8S_VERSIONS = ["1.30", "1.33"]
OVERLAY = "deploy/overlays/workload-identity"

needs_kubectl = needs_kustomize  # kubectl with a kustomize that builds deploy/ (tests/kustomize.py)
needs_crd = pytest.mark.skipif(not CRD_FILE.exists(),
                               reason="crds/nodeauditpolicy.yaml not generated yet (make crds)")


@functools.cache
def _kustomize(path: str) -> str:
    result = subprocess.run(["kubectl", "kustomize", str(REPO / path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return result.stdout


def render(path: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize PATH` (offline by construction: no remote bases, no helm charts), parsed
    afresh on every call so a test may change what it gets."""
    return tuple(doc for doc in yaml.safe_load_all(_kustomize(path)) if doc)


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    deployment = one(objects, "Deployment", "nodeaudit-operator")
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")


RENDERED = [pytest.param("deploy", marks=[needs_kubectl, needs_crd], id="deploy"),
            pytest.param(OVERLAY, marks=[needs_kubectl, needs_crd], id="workload-identity")]


@pytest.mark.parametrize("path", RENDERED)
def test_renders_the_expected_objects(path: str) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render(path))
    assert kinds == sorted([
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "nodeauditpolicies.nodeaudit.io"),
        ("ServiceAccount", SA), ("ClusterRole", SA), ("ClusterRoleBinding", SA), ("Role", SA),
        ("RoleBinding", SA), ("Deployment", "nodeaudit-operator"), ("Service", "nodeaudit-metrics"),
        ("Role", AMA_ROLE), ("RoleBinding", AMA_ROLE),
    ])
    for obj in render(path):
        if obj["kind"] in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in obj["metadata"], obj["kind"]
        elif obj["metadata"]["name"] == AMA_ROLE:  # the ContainerInsights check reads kube-system/ama-logs
            assert obj["metadata"]["namespace"] == "kube-system", obj["kind"]
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", RENDERED)
def test_every_object_validates_against_the_kubernetes_schemas(path: str, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in render(path):
        # strict: unknown fields are errors too (a typo such as `readOnlyRootFileSystem` fails here).
        kubernetes_validate.validate(obj, version, strict=True)


@needs_kubectl
@needs_crd
def test_the_crd_is_the_generated_one() -> None:
    rendered = one(render("deploy"), "CustomResourceDefinition")
    committed = yaml.safe_load(CRD_FILE.read_text())
    labels = rendered["metadata"].get("labels", {})
    for key in ("app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):  # added by kustomize
        labels.pop(key, None)
    if not labels:
        rendered["metadata"].pop("labels", None)
    assert rendered == committed


def test_crds_directory_is_a_kustomization_of_the_generated_file() -> None:
    doc = yaml.safe_load((REPO / "crds" / "kustomization.yaml").read_text())
    assert doc["resources"] == ["nodeauditpolicy.yaml"]


@pytest.mark.parametrize("path", RENDERED)
def test_namespace_allows_privileged_pods_for_the_node_jobs(path: str) -> None:
    labels = one(render(path), "Namespace", NAMESPACE)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"


def test_namespace_label_is_explained() -> None:
    text = (DEPLOY / "base" / "namespace.yaml").read_text()
    for why in ("hostPID", "privileged", "hostPath"):
        assert why in text


@pytest.mark.parametrize("path", RENDERED)
def test_operator_security_context(path: str) -> None:
    objects = render(path)
    deployment = one(objects, "Deployment", "nodeaudit-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    container = operator_container(objects)
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root filesystem needs one writable place: /tmp (HOME in the image).
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("path", RENDERED)
def test_operator_command_probe_and_metrics(path: str) -> None:
    objects = render(path)
    container = operator_container(objects)
    args = container["args"]
    assert args[0] == "run"
    assert not any(a.startswith("--peering") for a in args)  # standalone: one replica, no peering
    liveness = next(a for a in args if a.startswith("--liveness="))
    match = re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)(/\S+)", liveness)
    assert match, liveness
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert ports[probe["port"]] == int(match.group(1)) and probe["path"] == match.group(2)
    assert ports["metrics"] == 9090
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NODEAUDIT_METRICS_PORT"] == "9090"
    service = one(objects, "Service", "nodeaudit-metrics")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9090"
    assert annotations["prometheus.io/path"] == "/metrics"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not any(o["kind"] == "ServiceMonitor" for o in objects)


@pytest.mark.parametrize("path", RENDERED)
def test_node_jobs_run_the_operators_own_image(path: str) -> None:
    container = operator_container(render(path))
    env = {e["name"]: e for e in container["env"]}
    assert env["NODEAUDIT_IMAGE"]["value"] == container["image"]
    assert env["NODEAUDIT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["NODEAUDIT_ARM_ENDPOINT"]["value"] == "https://management.azure.com"


@pytest.mark.parametrize("path", RENDERED)
def test_no_wildcard_in_any_rbac_rule(path: str) -> None:
    for obj in render(path):
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        assert "aggregationRule" not in obj
        for rule in obj["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{obj['kind']} {obj['metadata']['name']}: {rule}"
                assert all("*" not in value for value in rule.get(field, []) if field != "apiGroups")


@pytest.mark.parametrize("path", RENDERED)
def test_rbac_is_least_privilege(path: str) -> None:
    objects = render(path)
    grants = grants_for(objects, NAMESPACE, SA)
    assert {(g.kind, g.namespace) for g in grants} == {("ClusterRole", None), ("Role", NAMESPACE),
                                                       ("Role", "kube-system")}

    def can(verb: str, group: str, resource: str, sub: str | None = None, ns: str | None = None) -> bool:
        return bool(allowed_by(grants, Request(verb, group, resource, sub, ns)))

    # What the operator does (operator/nodeaudit/controller.py, handlers.py and kopf itself).
    for verb in ("list", "watch", "patch"):
        assert can(verb, "", "nodes") and can(verb, "nodeaudit.io", "nodeauditpolicies")
    assert can("patch", "nodeaudit.io", "nodeauditpolicies", "status")
    for verb in ("list", "watch", "create"):
        assert can(verb, "batch", "jobs", ns=NAMESPACE)
    for verb in ("list", "create", "delete"):
        assert can(verb, "", "configmaps", ns=NAMESPACE)
    for verb in ("list", "watch"):
        assert can(verb, "", "pods", ns=NAMESPACE)
    assert can("create", "", "events", ns=NAMESPACE)
    # The ContainerInsights agent check: the ama-logs DaemonSet (that name only) and its pods.
    assert allowed_by(grants, Request("get", "apps", "daemonsets", None, "kube-system", "ama-logs"))
    assert not allowed_by(grants, Request("get", "apps", "daemonsets", None, "kube-system", "coredns"))
    assert not can("list", "apps", "daemonsets", ns="kube-system")
    assert can("list", "", "pods", ns="kube-system") and not can("watch", "", "pods", ns="kube-system")
    assert not can("list", "", "pods", ns="default")
    # What it must not be able to do.
    for resource, group in (("jobs", "batch"), ("configmaps", ""), ("pods", ""), ("events", "")):
        assert not can("create", group, resource, ns="kube-system")
        assert not can("list", group, resource)  # not across namespaces
    assert not can("get", "", "secrets", ns=NAMESPACE) and not can("list", "", "secrets")
    assert not can("create", "", "pods", ns=NAMESPACE)  # only through Jobs
    assert not can("exec", "", "pods", "exec", ns=NAMESPACE) and not can("create", "", "pods", "exec", NAMESPACE)
    for verb in ("create", "delete", "update"):
        assert not can(verb, "", "nodes") and not can(verb, "nodeaudit.io", "nodeauditpolicies")
    assert not can("list", "apiextensions.k8s.io", "customresourcedefinitions")  # kopf scanning is off
    assert not can("list", "", "namespaces")
    for verb in ("escalate", "bind", "impersonate", "create"):
        assert not can(verb, "rbac.authorization.k8s.io", "clusterroles")
    assert not can("impersonate", "", "serviceaccounts")


def test_rbac_matcher_itself() -> None:
    rule = {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"], "resourceNames": ["a"]}
    objects = [
        {"kind": "Role", "metadata": {"name": "r", "namespace": "ns"}, "rules": [rule]},
        {"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "ns"},
         "roleRef": {"kind": "Role", "name": "r", "apiGroup": "rbac.authorization.k8s.io"},
         "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]},
    ]
    grants = grants_for(objects, "ns", "sa")
    assert allowed_by(grants, Request("create", "batch", "jobs", None, "ns", "a"))
    assert not allowed_by(grants, Request("create", "batch", "jobs", None, "ns", "b"))
    assert not allowed_by(grants, Request("create", "batch", "jobs", None, "other", "a"))
    assert not allowed_by(grants, Request("create", "batch", "jobs", "status", "ns", "a"))
    assert not grants_for(objects, "ns", "someone-else")
    assert verb_of("GET", named=False, watch=True) == "watch" and verb_of("get", named=True) == "get"
    assert verb_of("DELETE", named=False) == "deletecollection" and verb_of("PATCH", named=True) == "patch"


@needs_kubectl
@needs_crd
def test_workload_identity_overlay() -> None:
    objects = render(OVERLAY)
    sa = one(objects, "ServiceAccount", SA)
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == "<CLIENT_ID>"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["azure.workload.identity/use"] == "true"
    # The selector is immutable on a live Deployment: the overlay must not change it.
    base = one(render("deploy"), "Deployment")
    assert one(objects, "Deployment")["spec"]["selector"] == base["spec"]["selector"]
    # Nothing else changes between the base and the overlay but those two.
    others = [o for o in objects if o["kind"] not in ("ServiceAccount", "Deployment")]
    assert others == [o for o in render("deploy") if o["kind"] not in ("ServiceAccount", "Deployment")]


def test_example_policies_are_copies_of_examples() -> None:
    copies = sorted(p.name for p in (DEPLOY / "examples").glob("*.yaml") if p.name != "kustomization.yaml")
    originals = sorted(p.name for p in (REPO / "examples").glob("*.yaml"))
    assert copies == originals, "refresh: cp examples/*.yaml deploy/examples/"
    for name in originals:
        assert (DEPLOY / "examples" / name).read_bytes() == (REPO / "examples" / name).read_bytes(), (
            f"deploy/examples/{name} differs from examples/{name}: cp examples/*.yaml deploy/examples/")
    listed = yaml.safe_load((DEPLOY / "examples" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == originals


@needs_kubectl
def test_example_policies_render_as_cluster_scoped_policies() -> None:
    objects = render("deploy/examples")
    assert sorted(o["metadata"]["name"] for o in objects) == ["identity", "procmon", "system-pool"]
    for obj in objects:
        assert obj["apiVersion"] == "nodeaudit.io/v1alpha1" and obj["kind"] == "NodeAuditPolicy"
        assert "namespace" not in obj["metadata"]
