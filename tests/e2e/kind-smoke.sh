#!/usr/bin/env bash
# Smoke test on a throw-away kind cluster: build the image, load it into the nodes, install
# deploy/, apply examples/procmon.yaml and wait until the policy is Ready.
#
# Needs: docker (a running engine that can pull kindest/node), kind, kubectl. Not run in the
# nodeaudit development sandbox (no kind, no registry there); shellcheck-clean only.
#
# Environment:
#   CLUSTER   kind cluster name                 (default nodeaudit-smoke)
#   IMAGE     image tag to build and load       (default: the one deploy/ renders, nodeaudit:0.1.0)
#   KEEP=1    keep the cluster afterwards (for a look around)
#   TIMEOUT   how long to wait for Ready        (default 600s)
#
# kind nodes are Debian-based containers without a real init's auditd: the Job installs auditd
# with apt inside the node container; the kernel audit facility is the Docker host's, so the
# rules are loaded into the host kernel while the cluster lives (removed when the policy is
# deleted, which this script does before deleting the cluster).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${CLUSTER:-nodeaudit-smoke}"
timeout="${TIMEOUT:-600s}"
kubectl_ctx="kind-${cluster}"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "kind-smoke: '$1' is required but not installed" >&2; exit 2; }
}
need docker
need kind
need kubectl

k() { kubectl --context "$kubectl_ctx" "$@"; }

# The image deploy/ refers to (after kustomize's images: rewrite), unless IMAGE is given.
if [ -z "${IMAGE:-}" ]; then
  IMAGE="$(kubectl kustomize "$repo/deploy" | awk '$1 == "image:" { print $2; exit }')"
fi
echo ">> image: $IMAGE"

cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo ">> failed ($status); operator log and Jobs:" >&2
    k -n nodeaudit-system logs deploy/nodeaudit-operator --tail=200 >&2 || true
    k -n nodeaudit-system get jobs,pods -o wide >&2 || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo ">> KEEP=1: cluster $cluster left running (kind delete cluster --name $cluster)"
  else
    # Remove the rules from the (shared) host kernel before the nodes go away.
    k delete nap procmon --ignore-not-found --wait=true --timeout=180s >/dev/null 2>&1 || true
    kind delete cluster --name "$cluster" || true
  fi
  exit "$status"
}
trap cleanup EXIT

echo ">> creating kind cluster $cluster"
kind create cluster --name "$cluster" --wait 120s
# The example policy selects user-mode AKS nodes: label the kind worker(s) like AKS does.
for node in $(k get nodes -o name); do
  k label "$node" kubernetes.azure.com/mode=user --overwrite
done

echo ">> building and loading $IMAGE"
docker build --tag "$IMAGE" "$repo"
kind load docker-image "$IMAGE" --name "$cluster"

echo ">> installing deploy/"
k apply -k "$repo/deploy"
k wait --for=condition=Established --timeout=60s crd/nodeauditpolicies.nodeaudit.io
k -n nodeaudit-system rollout status deploy/nodeaudit-operator --timeout=180s

echo ">> applying examples/procmon.yaml (no Azure here: the agent check is switched off)"
# kind has no VM scale sets: apply the example with monitoringAgent.check=None.
sed 's/check: VMSSExtension/check: None/' "$repo/examples/procmon.yaml" | k apply -f -

echo ">> waiting for Ready (timeout $timeout)"
k wait --for=condition=Ready --timeout="$timeout" nap/procmon

echo ">> result"
k get nap -o wide
k get nodes -o custom-columns='NODE:.metadata.name,PROCMON:.metadata.annotations.nodeaudit\.io/procmon'
k -n nodeaudit-system get jobs -l nodeaudit.io/policy=procmon -o wide
echo ">> kind smoke test passed"
