"""How many rules per second parse_rule checks, over a mix like real policies (not a test)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nodeaudit.core.presets import PRESETS, VOLUMES, auditd_control_rules, exclusion_rules
from nodeaudit.core.rules import grammar as rules_mod
from nodeaudit.core.rules.grammar import RuleError, Unsafe

# parse_rule memoizes; the grammar's own speed is the uncached function underneath.
parse_uncached = rules_mod._parse_rule_cached.__wrapped__
NO_UNSAFE = Unsafe()

MIX = [
    *(rule for preset in PRESETS.values() for rule in preset.rules),
    *VOLUMES["lean"].rules,
    *exclusion_rules(["/usr/bin/runc", "/usr/bin/containerd-shim-runc-v2"]),
    *auditd_control_rules(rate_limit=0, backlog_limit=8192, backlog_wait_time=60000),
    "-a always,exit -F arch=b64 -S open,truncate,ftruncate,creat,openat,openat2 -F exit=-EACCES "
    "-F auid>=1000 -F auid!=unset -k access",
    "-a always,exit -F arch=b64 -S execvee -k typo",  # invalid rules cost time too
    "-w /etc/passwd -p wa -k identity\n-e 2",
]


def _policy_file(directory: Path, policies: int, rules_each: int) -> Path:
    docs = []
    syscalls = ["execve", "openat", "unlinkat", "renameat2", "connect", "ptrace", "mount", "setuid"]
    for p in range(policies):
        rules = [
            f"-a always,exit -F arch=b64 -S {syscalls[r % len(syscalls)]} -F auid>={1000 + r} -k p{p}r{r}"
            for r in range(rules_each)
        ]
        docs.append({"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy",
                     "metadata": {"name": f"policy-{p}"}, "spec": {"rules": rules, "volume": "lean"}})
    path = directory / "policies.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def bench_cli(policies: int = 200, rules_each: int = 50) -> None:
    """The whole `nodeaudit validate` command: process start, YAML, model, rules and rendering."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _policy_file(Path(tmp), policies, rules_each)
        exe = Path(sys.executable).parent / "nodeaudit"
        start = time.perf_counter()
        done = subprocess.run([str(exe), "validate", "-q", str(path)], capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"validate failed: {done.stdout[-500:]}")
    total = policies * rules_each
    print(f"nodeaudit validate: {total / elapsed:,.0f} rules/s end to end "
          f"({policies} policies x {rules_each} rules in {elapsed:.2f} s, process start included)")


def main(seconds: float = 1.0) -> None:
    bench_cli()
    checked = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for rule in MIX:
            with contextlib.suppress(RuleError):
                parse_uncached(rule, NO_UNSAFE)
        checked += len(MIX)
    elapsed = time.perf_counter() - start
    print(
        f"parse_rule (uncached): {checked / elapsed:,.0f} rules/s ({len(MIX)}-rule mix, {checked} rules in {elapsed:.2f} s)"
    )


if __name__ == "__main__":
    main()
