"""Records and bytes shipped per exec, and exec-time ratio, per volume level (issue 7 targets).

On this machine's kernel through the real rootfs harness: apply.sh in a Debian bookworm root,
auditd 3.0.9 + audisp-syslog -> a datagram listener at the root's /dev/log. For each level a shell
inside the root runs N fork+execs of /bin/true (with a marker argument); the datagrams of those
execs are counted and measured, and the loop's wall time is compared with the same loop with no
audit rules loaded (ratio 1.0). Holds the kernel-audit lock throughout and restores the kernel.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import uuid

from tests.host import costlib, hostlib
from tests.policies import PROCMON_RULES, policy_doc

from bench.kernel import open_kernel_audit
from bench.targets import print_targets, verdict

EXECS = int(os.environ.get("NODEAUDIT_BENCH_EXECS", "3000"))
REPEATS = 3
SAMPLE = 500
TRUE = "/usr/bin/true"
LEVELS = [
    ("seed (forensic)", {"rules": list(PROCMON_RULES), "volume": "forensic"}),
    ("standard", {"presets": ["procmon"], "volume": "standard"}),
    ("lean", {"presets": ["procmon"], "volume": "lean"}),
    ("lean+aksNoise", {"presets": ["procmon"], "volume": "lean", "exclude": {"aksNoise": True}}),
]
TARGET_RECORDS, TARGET_BYTES, TARGET_REDUCTION, TARGET_RATIO = 2, 640, 2.5, 1.2


def main() -> int:
    tarball = hostlib.auditd_tarball()
    opened = open_kernel_audit("bench_cost", tarball)
    if isinstance(opened, int):
        return opened
    tmp, audit = opened
    rows = []
    devlog = None
    try:
        root_path = tmp / "root"
        audit.roots.append(root_path)
        root = hostlib.Rootfs.extract(tarball, root_path)
        # Baseline: no rules, audit disabled, no daemon.
        base = [costlib.exec_loop(root, EXECS, "/bin/true", "x") for _ in range(REPEATS)]
        devlog = hostlib.DevLog(root)
        for label, spec in LEVELS:
            bundle = hostlib.render_policy_bundle(tmp / "bundles" / label.split()[0],
                                                  policy_doc("procmon", spec.pop("rules", []), **spec))
            res = root.run_bundle(bundle)
            if not (res.result and res.result["ok"]):
                raise RuntimeError(f"apply failed for {label}: {res}")
            # Per-exec figures from a paced batch that must arrive complete.
            devlog.messages.clear()
            marker = f"m{uuid.uuid4().hex[:16]}"
            with costlib.Draining(devlog):
                costlib.exec_loop(root, SAMPLE, "/bin/true", marker)
            costlib.collect_until(devlog, lambda m, k=marker: len(costlib.events_of(m, TRUE, k)) >= SAMPLE, quiet=0.3)
            events = costlib.events_of(devlog.messages, TRUE, marker)
            if len(events) != SAMPLE:
                raise RuntimeError(f"{label}: {len(events)} of {SAMPLE} execs reached /dev/log")
            per_exec = (sum(len(e.messages) for e in events) / SAMPLE, sum(e.bytes for e in events) / SAMPLE)
            # Timing: EXECS back to back, each run paired with one with kernel audit disabled
            # (-e 0: no rule is evaluated, same daemon and listener) so machine load drifts cancel.
            times, bases, delivered = [], [], []
            lost_before = int(audit.status().get("lost", "0"))
            for _ in range(REPEATS):
                audit.auditctl("-e", "0")
                with costlib.Draining(devlog):
                    bases.append(costlib.exec_loop(root, EXECS, "/bin/true", "x"))
                audit.auditctl("-e", "1")
                devlog.messages.clear()
                marker = f"m{uuid.uuid4().hex[:16]}"
                with costlib.Draining(devlog):  # a syslog daemon reads /dev/log all the time
                    times.append(costlib.exec_loop(root, EXECS, "/bin/true", marker))
                costlib.collect_until(devlog, lambda m: False, timeout=0.5, quiet=0.5)
                delivered.append(len(costlib.events_of(devlog.messages, TRUE, marker)) / EXECS)
            lost = int(audit.status().get("lost", "0")) - lost_before
            ratio = statistics.median(t / b for t, b in zip(times, bases, strict=True))
            rows.append((label, *per_exec, statistics.median(times), ratio, min(delivered), lost))
    finally:
        if devlog is not None:
            devlog.close()
        problems = audit.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if problems:  # printed here too when a failure is on its way up
            print("bench_cost teardown found: " + "; ".join(problems), file=sys.stderr)
    base_s = statistics.median(base)
    seed_bytes = rows[0][2]
    print(f"records/bytes per exec: {SAMPLE} execs, every one delivered to /dev/log")
    print(f"{EXECS:,} execs of /bin/true per run, median of {REPEATS} runs; "
          f"no rules, no daemon: {base_s:.3f} s; ratio = median of (run / paired run with audit disabled)")
    print(f"{'level':<18} {'records/exec':>12} {'bytes/exec':>11} {'vs seed':>8} {'exec time':>10} {'ratio':>6}"
          f" {'burst delivered':>16} {'kernel lost':>12}")
    for label, recs, byts, secs, ratio, dlv, lost in rows:
        print(f"{label:<18} {recs:>12.2f} {byts:>11.1f} {seed_bytes / byts:>7.2f}x {secs:>9.3f}s "
              f"{ratio:>6.2f} {dlv:>15.1%} {lost:>12,}")
    misses = 0
    for label, recs, byts, _secs, ratio, _dlv, _lost in rows:
        if not label.startswith("lean"):
            continue
        checks = [
            (f"{label}: <= {TARGET_RECORDS} records/exec", recs <= TARGET_RECORDS, f"{recs:.2f}"),
            (f"{label}: <= {TARGET_BYTES} bytes/exec", byts <= TARGET_BYTES, f"{byts:.0f}"),
            (f"{label}: >= {TARGET_REDUCTION}x fewer bytes than seed", seed_bytes / byts >= TARGET_REDUCTION,
             f"{seed_bytes / byts:.2f}x"),
            (f"{label}: exec-time ratio <= {TARGET_RATIO}", ratio <= TARGET_RATIO, f"{ratio:.2f}"),
        ]
        misses += print_targets(checks)
    return verdict(misses, problems)


if __name__ == "__main__":
    sys.exit(main())
