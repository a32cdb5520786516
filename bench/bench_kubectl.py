"""kubectl against the demo's API server: how long `get` (a Table), `explain` and `apply` take with a
cold and a warm discovery cache, at a realistic size (not a test; the figures are printed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from nodeaudit.testing import simulator as sim_mod
from nodeaudit.testing.demo import _crd
from nodeaudit.testing.runtime import ServerThread

REPO = Path(__file__).resolve().parent.parent
NAP = ("nodeaudit.io", "v1alpha1", "nodeauditpolicies")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or done.stderr:
        raise RuntimeError(f"{' '.join(cmd[3:])}: exit {done.returncode}: {done.stderr.strip()[:300]}")
    return elapsed


def main(nodes: int = 500, policies: int = 50, runs: int = 5) -> int:
    binaries = [b for b in [shutil.which("kubectl"), *os.environ.get("NODEAUDIT_KUBECTL", "").split(":")] if b]
    if not binaries:
        print("no kubectl: skipped (make apt-deps installs kubernetes-client)")
        return 0
    policy = yaml.safe_load((REPO / "examples" / "procmon.yaml").read_text())
    with ServerThread([_crd()]) as server, tempfile.TemporaryDirectory() as tmp:
        store = server.server
        assert store is not None

        def seed() -> None:
            for i in range(nodes):
                store.put_object(("", "v1", "nodes"), None, sim_mod.aks_node("user1", i, mode="user"))
            for i in range(policies):
                store.put_object(NAP, None, {**policy, "metadata": {"name": f"p{i}"}})

        server.call(seed, timeout=120)
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump({**policy, "metadata": {"name": "applied"}}))
        env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "KUBECONFIG": server.kubeconfig_path}
        for binary in binaries:
            version = subprocess.run([binary, "version", "--client"], capture_output=True, text=True).stdout
            label = version.split("GitVersion:")[-1].split(",")[0].strip('"') if "GitVersion" in version \
                else version.split()[2] if len(version.split()) > 2 else binary
            for what, args in (("get nodes", ["get", "nodes"]), ("get nap", ["get", "nap"]),
                               ("explain nap.spec", ["explain", "nodeauditpolicy.spec"]),
                               ("apply -f", ["apply", "-f", str(path)])):
                cold, warm = [], []
                for run in range(runs):
                    cache = Path(tmp) / f"cache-{binary.replace('/', '_')}-{what.replace(' ', '_')}-{run}"
                    cold.append(_timed([binary, "--cache-dir", str(cache), *args], env))
                    warm.append(_timed([binary, "--cache-dir", str(cache), *args], env))
                print(f"kubectl {label:>8} {what:<17} cold cache {min(cold) * 1000:5.0f} ms, warm "
                      f"{min(warm) * 1000:5.0f} ms (best of {runs}; {nodes} nodes, {policies} policies)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
