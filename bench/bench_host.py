"""Host figures on this machine's kernel: first apply (with the real apt install), idempotent
re-apply, and the execve cost the procmon rules add.

Runs under the same discipline as the host tests: the machine-wide kernel-audit lock from start to
end, refusal when another auditd is registered, and a teardown that kills our auditd by PID and
flushes and disables kernel audit whatever happens.

    python -m bench.bench_host [--execs 5000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "host"))

import hostlib  # noqa: E402

SPAWN = 'i=0; while [ "$i" -lt "$1" ]; do /bin/true; i=$((i + 1)); done'


def _spawn_seconds(root: hostlib.Rootfs, count: int) -> float:
    res = root.run("sh", "-c", f"start=$(date +%s%N); {SPAWN}; end=$(date +%s%N); echo $((end - start))",
                   "sh", str(count))
    if res.rc != 0:
        raise RuntimeError(f"spawn loop failed: {res!r}")
    return int(res.stdout.strip().splitlines()[-1]) / 1e9


class _Drain(threading.Thread):
    """Keeps reading /dev/log so audisp-syslog never blocks while we measure."""

    def __init__(self, devlog: hostlib.DevLog):
        super().__init__(daemon=True)
        self.devlog = devlog
        self.count = 0
        self.bytes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        self.devlog.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                data = self.devlog.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.count += 1
            self.bytes += len(data)


def measure(execs: int, rounds: int) -> dict[str, object]:
    tarballs = {"fresh": hostlib.base_tarball(), "auditd": hostlib.auditd_tarball()}
    tmp = Path(tempfile.mkdtemp(prefix="nodeaudit-bench-"))
    ctl = hostlib.Rootfs.extract(tarballs["auditd"], tmp / "ctl")
    audit = hostlib.KernelAudit(ctl=ctl)
    audit.open()
    figures: dict[str, object] = {"execs": execs, "rounds": rounds}
    drain = None
    try:
        root_path = tmp / "root"
        audit.roots.append(root_path)
        root = hostlib.Rootfs.extract(tarballs["fresh"], root_path)
        devlog = hostlib.DevLog(root)
        drain = _Drain(devlog)
        drain.start()
        bundle = hostlib.render_policy_bundle(tmp / "bundle", hostlib.policy_doc("procmon", list(hostlib.PROCMON_RULES)))

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

        # The kernel's lost counter is cumulative since boot: report what this run added.
        lost_before = int(audit.status().get("lost", "0"))
        # Interleave rounds so drift on the machine hits both sides alike.
        with_rules, without = [], []
        for _ in range(rounds):
            audit.auditctl("-D")
            without.append(_spawn_seconds(root, execs))
            load = root.run("augenrules", "--load")
            if load.rc != 0:
                raise RuntimeError(f"reload failed: {load!r}")
            before = drain.count, drain.bytes
            with_rules.append(_spawn_seconds(root, execs))
            time.sleep(1.0)
            figures["syslog_msgs_per_exec"] = round((drain.count - before[0]) / execs, 2)
            figures["syslog_bytes_per_exec"] = round((drain.bytes - before[1]) / execs)
        figures["exec_s_without_rules"] = round(statistics.median(without), 3)
        figures["exec_s_with_rules"] = round(statistics.median(with_rules), 3)
        figures["exec_ratio"] = round(statistics.median(with_rules) / statistics.median(without), 2)
        figures["lost_during_run"] = int(audit.status().get("lost", "0")) - lost_before
    finally:
        if drain is not None:
            drain.stop.set()
            drain.join(2)
            drain.devlog.close()
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
