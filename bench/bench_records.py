"""The JSON dispatcher against the raw audisp-syslog path, side by side in one run (issue 12 targets).

On this machine's kernel with the real auditd 3.0.9 in a Debian 12 root with python3, policy
`procmon` at `lean`, `syslog.format: raw` then `json`. The execs run inside a pod made the way
kubelet and containerd lay it out (tests/host/podlib.py), so the JSON events carry the container.
A syslog daemon is played by a thread that reads /dev/log all the time.

Per format:
- records (datagrams) and bytes per exec, over SAMPLE execs that must all arrive;
- dispatcher CPU per event: its utime+stime over the events it handled (its state file), while a
  loop of TIMED execs runs;
- exec time ratio: the loop with the rules against a paired run with kernel audit disabled (-e 0);
- a paced 500 execs/s for 10 s: every exec must arrive, none lost by the kernel, none dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

from tests.host import costlib, hostlib, podlib
from tests.policies import policy_doc

from bench.kernel import open_kernel_audit
from bench.targets import print_targets, verdict

SAMPLE = int(os.environ.get("NODEAUDIT_BENCH_SAMPLE", "500"))
TIMED = int(os.environ.get("NODEAUDIT_BENCH_EXECS", "2000"))
REPEATS = 3
RATE, SECONDS = 500, 10
TRUE = "/usr/bin/true"
SEED_BYTES = 1640
TARGET_RECORDS, TARGET_BYTES, TARGET_CPU_US = 1, 520, 250
STATE = "var/lib/nodeaudit/state/dispatcher.json"
# A paced exec loop inside the root (python3 is there): one posix_spawn every 1/RATE s.
PACED = (
    "import os, sys, time\n"
    "rate, seconds, program, marker = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]\n"
    "n = int(rate * seconds); start = time.monotonic(); late = 0\n"
    "for i in range(n):\n"
    "    due = start + i / rate\n"
    "    now = time.monotonic()\n"
    "    if due > now: time.sleep(due - now)\n"
    "    else: late += 1\n"
    "    pid = os.posix_spawn(program, [program, marker], {})\n"
    "    os.waitpid(pid, 0)\n"
    "print(n, round(time.monotonic() - start, 3), late)\n"
)


def json_events(messages: list[str], marker: str) -> list[dict]:
    out = []
    for m in messages:
        _, sep, body = m.partition(">nodeaudit: ")
        if sep and body.startswith("{") and marker in body:
            event = json.loads(body)
            if event.get("exe") == TRUE and marker in event.get("argv", []):
                out.append(event)
    return out


def marker_datagrams(messages: list[str], marker: str, fmt: str) -> tuple[int, int, int]:
    """(execs seen, datagrams, bytes) of the marker's execs of /usr/bin/true."""
    if fmt == "raw":
        events = costlib.events_of(messages, TRUE, marker)
        return len(events), sum(len(e.messages) for e in events), sum(e.bytes for e in events)
    mine = [m for m in messages if marker in m and f'"exe":"{TRUE}"' in m]
    return len(mine), len(mine), sum(len(m.encode()) for m in mine)


def in_pod_loop(root: hostlib.Rootfs, cgroup: podlib.KubeletCgroup, count: int, marker: str) -> float:
    """`count` execs of /usr/bin/true by a shell inside the pod's cgroup; wall seconds of the loop."""
    import subprocess

    script = ('n=$1; m=$2; s=$(date +%s%N); i=0; while [ "$i" -lt "$n" ]; do /usr/bin/true "$m"; i=$((i+1)); done; '
              'e=$(date +%s%N); echo $((e - s))')
    proc = subprocess.run(["chroot", str(root.path), "/bin/sh", "-c", script, "sh", str(count), marker],
                          capture_output=True, text=True, preexec_fn=cgroup.join, timeout=600,
                          env=hostlib.realhost.root_env())
    if proc.returncode != 0:
        raise RuntimeError(f"exec loop failed: {proc.stderr}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1e9


def dispatcher_cpu(root: hostlib.Rootfs) -> tuple[float, int] | None:
    """(utime+stime seconds, events handled) of the running dispatcher."""
    for pid in root.processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"/var/lib/nodeaudit/dispatcher/dispatcher.py" in cmdline:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return cpu, int(json.loads((root / STATE).read_text())["events"])
    return None


def run_format(fmt: str, root: hostlib.Rootfs, audit: hostlib.KernelAudit, cgroup: podlib.KubeletCgroup,
               devlog: hostlib.DevLog, tmp: Path) -> dict[str, object]:
    import subprocess

    spec = {"presets": ["procmon"], "volume": "lean", "syslog": {"format": fmt}}
    bundle = hostlib.render_policy_bundle(tmp / "bundles" / fmt, policy_doc("procmon", [], **spec))
    row: dict[str, object] = {"format": fmt}
    # /dev/log is read from before the apply: auditd itself logs there and blocks when nobody reads.
    with costlib.Draining(devlog):
        res = root.run_bundle(bundle)
        if not (res.result and res.result["ok"]):
            raise RuntimeError(f"apply failed for {fmt}: {res}")
        if res.result.get("syslogFormat") != fmt:
            raise RuntimeError(f"{fmt}: the host ran {res.result.get('syslogFormat')} ({res.result.get('fallback')})")
        # Records and bytes per exec: a batch that must arrive complete.
        marker = f"m{uuid.uuid4().hex[:16]}"
        in_pod_loop(root, cgroup, SAMPLE, marker)
        deadline = time.monotonic() + 20
        while marker_datagrams(list(devlog.messages), marker, fmt)[0] < SAMPLE and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        seen, datagrams, size = marker_datagrams(list(devlog.messages), marker, fmt)
        if seen != SAMPLE:
            raise RuntimeError(f"{fmt}: {seen} of {SAMPLE} execs reached /dev/log")
        row["records"] = datagrams / SAMPLE
        row["bytes"] = size / SAMPLE
        if fmt == "json":
            events = json_events(list(devlog.messages), marker)
            row["attributed"] = sum(1 for e in events if e.get("container") and e["container"].get("pod")) / SAMPLE
            row["unattributed"] = [e.get("container") for e in events
                                   if not (e.get("container") and e["container"].get("pod"))][:3]
        devlog.messages.clear()
        # Exec time against audit disabled, paired runs; dispatcher CPU per event meanwhile.
        ratios, cpus = [], []
        for _ in range(REPEATS):
            audit.auditctl("-e", "0")
            base = in_pod_loop(root, cgroup, TIMED, "x")
            audit.auditctl("-e", "1")
            before = dispatcher_cpu(root) if fmt == "json" else None
            timed = in_pod_loop(root, cgroup, TIMED, f"t{uuid.uuid4().hex[:8]}")
            ratios.append(timed / base)
            if before is not None:
                time.sleep(2.5)  # the state file is written every 2 s
                after = dispatcher_cpu(root)
                if after and after[1] > before[1]:
                    cpus.append((after[0] - before[0]) / (after[1] - before[1]) * 1e6)
            devlog.messages.clear()
        row["ratio"] = statistics.median(ratios)
        row["cpu_us"] = statistics.median(cpus) if cpus else None
        # 500 execs/s for 10 s, paced, in the pod.
        marker = f"p{uuid.uuid4().hex[:16]}"
        lost_before = int(audit.status().get("lost", "0"))
        state_before = json.loads((root / STATE).read_text()) if fmt == "json" else {}
        paced = subprocess.run(["chroot", str(root.path), "/usr/bin/python3", "-c", PACED, str(RATE), str(SECONDS),
                                TRUE, marker], capture_output=True, text=True, preexec_fn=cgroup.join,
                               timeout=120, env=hostlib.realhost.root_env())
        if paced.returncode != 0:
            raise RuntimeError(f"paced loop failed: {paced.stderr}")
        n, took, late = (float(x) for x in paced.stdout.split())
        deadline = time.monotonic() + 30
        while marker_datagrams(list(devlog.messages), marker, fmt)[0] < n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)
        row["paced"] = (int(n), took, int(late), marker_datagrams(list(devlog.messages), marker, fmt)[0])
        row["lost"] = int(audit.status().get("lost", "0")) - lost_before
        if fmt == "json":
            state = json.loads((root / STATE).read_text())
            row["dropped"] = state["dropped"] - state_before["dropped"]
        devlog.messages.clear()
    return row


def main() -> int:
    tarball = hostlib.python_tarball()
    opened = open_kernel_audit("bench_records", hostlib.auditd_tarball())
    if isinstance(opened, int):
        return opened
    tmp, audit = opened
    rows = []
    devlog = cgroup = None
    try:
        root_path = tmp / "root"
        audit.roots.append(root_path)
        root = hostlib.Rootfs.extract(tarball, root_path)
        pod_uid, container_id = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
        cgroup = podlib.KubeletCgroup(pod_uid, container_id)
        podlib.write_task_state(root, container_id, pod_uid)
        devlog = hostlib.DevLog(root)
        for fmt in ("raw", "json"):
            rows.append(run_format(fmt, root, audit, cgroup, devlog, tmp))
    finally:
        if devlog is not None:
            devlog.close()
        if cgroup is not None:
            cgroup.close()
        problems = audit.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if problems:
            print("bench_records teardown found: " + "; ".join(problems), file=sys.stderr)
    print(f"procmon at lean, execs of {TRUE} in a pod (kubepods slice + cri-containerd scope + containerd task state)")
    print(f"records/bytes: {SAMPLE} execs, every one delivered; ratio: {TIMED:,} execs, median of {REPEATS} "
          f"paired runs against kernel audit disabled; paced: {RATE} execs/s for {SECONDS} s")
    print(f"{'format':<6} {'records/exec':>12} {'bytes/exec':>11} {'vs 1,640':>9} {'attributed':>10} "
          f"{'cpu us/event':>12} {'exec ratio':>10} {'paced delivered':>16} {'lost':>5} {'dropped':>8}")
    for r in rows:
        n, took, late, got = r["paced"]  # type: ignore[misc]
        cpu = "-" if r.get("cpu_us") is None else f"{r['cpu_us']:.0f}"
        attributed = "-" if "attributed" not in r else f"{r['attributed']:.0%}"
        print(f"{r['format']:<6} {r['records']:>12.2f} {r['bytes']:>11.1f} {SEED_BYTES / r['bytes']:>8.2f}x "
              f"{attributed:>10} {cpu:>12} {r['ratio']:>10.2f} {got:>7,}/{n:,} in {took:.1f}s {r['lost']:>5} "
              f"{r.get('dropped', '-')!s:>8}")
    misses = 0
    j = next(r for r in rows if r["format"] == "json")
    n, _took, _late, got = j["paced"]  # type: ignore[misc]
    checks = [
        (f"json: {TARGET_RECORDS} record per exec", j["records"] == TARGET_RECORDS, f"{j['records']:.2f}"),
        (f"json: <= {TARGET_BYTES} bytes per attributed container exec", j["bytes"] <= TARGET_BYTES,
         f"{j['bytes']:.0f}"),
        ("json: >= 3x fewer bytes than the manual procedure's 1,640", SEED_BYTES / j["bytes"] >= 3,
         f"{SEED_BYTES / j['bytes']:.2f}x"),
        ("json: every exec attributed to its pod", j.get("attributed") == 1,
         f"{j.get('attributed', 0):.1%}; not: {j.get('unattributed')}"),
        (f"json: dispatcher <= {TARGET_CPU_US} us CPU per event", (j.get("cpu_us") or 1e9) <= TARGET_CPU_US,
         f"{j.get('cpu_us')}"),
        (f"json: no event lost at {RATE} execs/s for {SECONDS} s", got == n and j["lost"] == 0 and j["dropped"] == 0,
         f"{got}/{n}, kernel lost {j['lost']}, dropped {j['dropped']}"),
    ]
    misses += print_targets(checks)
    return verdict(misses, problems)


if __name__ == "__main__":
    sys.exit(main())
