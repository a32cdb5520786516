"""Host figures on this machine's kernel: first apply (with the real apt install), idempotent
re-apply, and the execve cost the procmon rules add.

Runs under the same discipline as the host tests: the machine-wide kernel-audit lock from start to
end, refusal when another auditd is registered, and a teardown that kills our auditd by PID and
flushes and disables kernel audit whatever happens.

    python -m bench.bench_host [--execs 5000] [--rounds 3] [--json]

The exec cost is measured with costlib's paired method (the same as bench_cost): a shell in the
root runs N fork+execs of /bin/true, alternately with kernel audit disabled and enabled.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from tests.host import costlib, hostlib
from tests.policies import policy_doc


def measure(execs: int, rounds: int) -> dict[str, object]:
    tarballs = {"fresh": hostlib.base_tarball(), "auditd": hostlib.auditd_tarball()}
    tmp = Path(tempfile.mkdtemp(prefix="nodeaudit-bench-"))
    ctl = hostlib.Rootfs.extract(tarballs["auditd"], tmp / "ctl")
    audit = hostlib.KernelAudit(ctl=ctl)
    try:
        audit.open()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    figures: dict[str, object] = {"execs": execs, "rounds": rounds}
    devlog = None
    try:
        root_path = tmp / "root"
        audit.roots.append(root_path)
        root = hostlib.Rootfs.extract(tarballs["fresh"], root_path)
        devlog = hostlib.DevLog(root)
        bundle = hostlib.render_policy_bundle(tmp / "bundle", policy_doc())

        with costlib.Draining(devlog):  # audisp-syslog must never block on /dev/log
            first = root.run_bundle(bundle)
            if first.rc != 0 or not first.result or not first.result.get("installed"):
                raise RuntimeError(f"first apply failed or installed nothing: {first!r}")
            figures["first_apply_s"] = round(first.seconds, 2)
            again = [root.run_bundle(bundle) for _ in range(5)]
        if any(r.rc != 0 or not r.result or r.result["restarted"] for r in again):
            raise RuntimeError(f"re-apply not idempotent: {again!r}")
        figures["reapply_s_median"] = round(statistics.median(r.seconds for r in again), 3)
        figures["reapply_s_max"] = round(max(r.seconds for r in again), 3)
        figures["audit_version"] = first.result["auditVersion"]

        # The execve cost of the procmon rules, measured as bench_cost does: each run with the
        # rules evaluated (-e 1) paired with one with kernel audit disabled (-e 0: same rules,
        # daemon and listener), ratio = median of the pairs' ratios, so machine drift cancels.
        # Bytes and records per exec are bench_cost's figures. The kernel's lost counter is
        # cumulative since boot: report what this run added.
        lost_before = int(audit.status().get("lost", "0"))
        with_rules, disabled = [], []
        for _ in range(rounds):
            audit.auditctl("-e", "0")
            with costlib.Draining(devlog):
                disabled.append(costlib.exec_loop(root, execs))
            audit.auditctl("-e", "1")
            with costlib.Draining(devlog):
                with_rules.append(costlib.exec_loop(root, execs))
            devlog.messages.clear()
        figures["exec_s_audit_disabled"] = round(statistics.median(disabled), 3)
        figures["exec_s_with_rules"] = round(statistics.median(with_rules), 3)
        figures["exec_ratio"] = round(statistics.median(w / d for w, d in zip(with_rules, disabled, strict=True)), 2)
        figures["lost_during_run"] = int(audit.status().get("lost", "0")) - lost_before
    finally:
        if devlog is not None:
            devlog.close()
        problems = audit.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if problems:
        raise RuntimeError("teardown: " + "; ".join(problems))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        figures = measure(args.execs, args.rounds)
    except hostlib.KernelAuditUnavailable as exc:
        print(f"bench_host skipped: {exc}", file=sys.stderr)
        return 0
    except hostlib.KernelAuditBusy as exc:
        print(f"bench_host refused: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print("host apply and exec cost (real kernel audit, Debian bookworm root)")
        for key, value in figures.items():
            print(f"  {key:24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
