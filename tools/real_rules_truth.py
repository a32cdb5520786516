"""Rebuild tests/data/real-rules/truth.json: what the real auditctl does with each public rule line.

Why: the rule grammar (operator/nodeaudit/core/rules/) claims to accept exactly what auditctl
accepts and to predict its `auditctl -l` form. tests/test_real_rules.py holds it to that over every
distinct line of the public rule files in tests/data/real-rules/ (SOURCES.md names each one). This
script makes the verdicts it compares against, with the real auditctl and the real kernel, so that a
newer audit userspace (Ubuntu 24.04 ships 3.1.x) can be added by running it against another root.

How: auditctl comes from the cached Debian 12 root filesystem (audit 3.0.9, the host tests'
tarball, built with mmdebstrap on first use), extracted into a temporary directory; nothing is
installed on the machine. Under the machine-wide kernel-audit lock (realhost.KernelAuditGuard:
refuses someone else's daemon or rules, restores the enabled flag, limits and an empty rule list on
exit, also after Ctrl-C) each rule line is loaded alone into an empty rule set
(`auditctl ARGS`, ARGS = shlex.split(line)), listed with `auditctl -l`, then flushed with
`auditctl -D`. Kernel auditing is switched off (`-e 0`) for the run so that a broad rule loaded for a
moment emits nothing. Control lines (-e, -f, -D, -b, ...) are classified by reading, never run.

Host-dependent refusals are marked: a watched path (or its parent) missing in this root, a user or
group name this root's passwd/group does not know. For the missing paths a second pass creates the
directories in the throwaway root and records `listing_if_paths_exist`, what a node that has
them lists.

Run (as root, ~30 s):
    python tools/real_rules_truth.py -o /tmp/truth.json --compare tests/data/real-rules/truth.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))

from nodeaudit.testing import realhost  # noqa: E402

CORPUS = REPO / "tests" / "data" / "real-rules"
_COMMENTED = re.compile(r"#(-{1,2}[A-Za-z].*)")  # `#-a ...`: a rule the authors ship commented out

# Control lines: what each does to a node, by reading auditctl(8). Never executed here.
CONTROL = {
    "-D": ("dangerous", "deletes every loaded rule, other tools' rules included"),
    "-b": ("harmless", "kernel backlog limit"),
    "-r": ("harmless", "kernel rate limit (records per second)"),
    "--backlog_wait_time": ("harmless", "backlog wait time (jiffies)"),
    "-c": ("loader", "directive for `auditctl -R` (ignore / continue on errors)"),
    "-i": ("loader", "directive for `auditctl -R` (ignore / continue on errors)"),
    "--loginuid-immutable": ("locking", "loginuid cannot be changed again until reboot"),
}
_TAKES_VALUE = {"-b", "-r", "--backlog_wait_time", "-e", "-f"}


def corpus_lines(directory: Path) -> dict[str, dict[str, Any]]:
    """Distinct rule and control lines of the corpus (whitespace collapsed), with their sources.

    `.rules` files are read line by line; `.yaml` files are ConfigMaps whose data values are rule
    files. Lines commented out as `#-...` count: their authors tell users to uncomment them."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix == ".rules":
            pieces: list[tuple[str, str]] = [("", path.read_text(encoding="utf-8"))]
        elif path.suffix == ".yaml":
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            pieces = [(f"data.{key}:", text) for key, text in document["data"].items()]
        else:
            continue
        for prefix, text in pieces:
            for line, where, commented in _lines(text):
                entry = found.setdefault(line, {"sources": [], "commented": True})
                entry["sources"].append(f"{path.name}:{prefix}{where}")
                entry["commented"] = entry["commented"] and commented
    for entry in found.values():
        entry["sources"].sort()
    return found


def _lines(text: str) -> Iterator[tuple[str, str, bool]]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("-"):
            yield " ".join(line.split()), str(number), False
        elif match := _COMMENTED.fullmatch(line):
            yield " ".join(match.group(1).split()), f"{number} (commented out)", True


def classify_control(args: list[str]) -> dict[str, Any] | None:
    """The control entry for a control line, or None when the line is a rule."""
    option = args[0]
    if option in ("-e", "-f"):
        value = args[1] if len(args) > 1 else None
        if option == "-e":
            klass, why = {
                "0": ("dangerous", "turns kernel auditing off for every policy on the node"),
                "1": ("harmless", "turns kernel auditing on"),
                "2": ("dangerous", "locks the rules until reboot"),
            }.get(value or "", ("invalid", "-e takes 0, 1 or 2"))
        else:
            klass, why = {
                "0": ("harmless", "failure mode silent"),
                "1": ("harmless", "failure mode silent/printk"),
                "2": ("dangerous", "kernel panic when records are lost"),
            }.get(value or "", ("invalid", "-f takes 0, 1 or 2"))
    elif option in CONTROL:
        klass, why = CONTROL[option]
        value = args[1] if len(args) > 1 else None
    else:
        return None
    well_formed = len(args) == (2 if option in _TAKES_VALUE else 1) and (
        value is None or value.isdigit())
    return {"option": option, "value": value, "class": klass, "why": why, "well_formed": well_formed,
            "in_auditctl_help": True}


def _missing_paths(args: list[str]) -> list[tuple[str, bool]]:
    """Paths a rule names, each with whether the path itself (a directory) must exist."""
    out = []
    for option, value in zip(args, args[1:], strict=False):
        if option == "-w":
            out.append((value, False))
        elif option == "-F":
            name, _, path = value.partition("=")
            if name in ("path", "exe"):
                out.append((path, False))
            elif name == "dir":
                out.append((path, True))
    return [(p, d) for p, d in out if p.startswith("/")]


class Loader:
    """auditctl of one root, with the kernel-audit guard held."""

    def __init__(self, root: Path, guard: realhost.KernelAuditGuard):
        self.root = root
        self.guard = guard

    def load_alone(self, args: list[str]) -> dict[str, Any]:
        self.guard.auditctl("-D")
        added = self.guard.auditctl(*args)
        listed = self.listing()
        self.guard.auditctl("-D")
        if added.returncode == 0:
            return {"verdict": "accept", "listing": listed}
        error = (added.stderr.strip() or added.stdout.strip()).splitlines()
        return {"verdict": "refuse", "rc": added.returncode, "error": error[-1] if error else ""}

    def listing(self) -> list[str]:
        """`auditctl -l` line by line, leading blanks kept: auditctl prints a watch whose perm
        field comes before its path as ` -p x-w /usr/bin/npm ...` (verified on 3.0.9)."""
        lines = self.guard.auditctl("-l").stdout.rstrip("\n").splitlines()
        return [] if lines == ["No rules"] else lines

    def create(self, paths: list[tuple[str, bool]]) -> list[str]:
        """Create the directories a rule's paths need, inside the root.

        `mkdir -p` runs chrooted: the root's absolute symlinks (/var/lock -> /run/lock) must
        resolve inside the root, never on the machine."""
        created = []
        for path, whole in paths:
            target = path.rstrip("/") if whole or path.endswith("/") else os.path.dirname(path)
            probe = subprocess.run(["chroot", str(self.root), "test", "-d", target], env=realhost.root_env())
            if probe.returncode != 0:
                subprocess.run(["chroot", str(self.root), "mkdir", "-p", target], check=True,
                               env=realhost.root_env())
                created.append(target)
        return created


def host_dependence(args: list[str], result: dict[str, Any]) -> str | None:
    if result["verdict"] != "refuse":
        return None
    error = result["error"]
    if "No such file or directory" in error and _missing_paths(args):
        return f"a path in the rule (or its parent directory) does not exist on this host: {error}"
    if error.startswith(("Unknown user", "Unknown group")):
        name = error.split(":", 1)[1].strip()
        pair = next((v for o, v in zip(args, args[1:], strict=False) if o == "-F" and v.endswith(name)), name)
        for token in args:  # `-Fuid=chrony`: the value attached to its option
            if token.startswith("-F") and token.endswith(name) and len(token) > 2:
                pair = token[2:]
        return f"user/group name resolved through this host's passwd/group: {pair}"
    return None


def build(corpus: Path, progress: realhost.Progress) -> dict[str, Any]:
    lines = corpus_lines(corpus)
    tarball = realhost.auditd_tarball(progress)
    workdir = Path(tempfile.mkdtemp(prefix="nodeaudit-truth-"))
    root = realhost.extract_root(tarball, workdir / "root")
    guard = realhost.KernelAuditGuard(root, roots=[root], on_wait=lambda: progress(
        "waiting for the kernel-audit lock (another kernel-audit user)"))
    entries: list[dict[str, Any]] = []
    guard.open()
    try:
        loader = Loader(root, guard)
        found_state = {k: guard.initial.get(k, "") for k in
                       ("enabled", "failure", "pid", "backlog_limit", "backlog_wait_time")}
        guard.auditctl("-e", "0")
        version = guard.auditctl("-v").stdout.strip()
        for line in sorted(lines):
            args = shlex.split(line)
            entry: dict[str, Any] = {"rule": line, **lines[line], "args": args,
                                     "shlex_differs": args != line.split()}
            control = classify_control(args)
            if control is not None:
                entry.update(kind="control", control=control)
            else:
                result = loader.load_alone(args)
                entry.update(kind="rule", **result, host_dependent=host_dependence(args, result))
            entries.append(entry)
        # Second pass, after every plain verdict: give the missing paths to the rules that need them.
        for entry in entries:
            if entry.get("host_dependent", "") and entry["host_dependent"].startswith("a path"):
                created = loader.create(_missing_paths(entry["args"]))
                again = loader.load_alone(entry["args"])
                if again["verdict"] == "accept":
                    entry["listing_if_paths_exist"] = again["listing"]
                    entry["paths_created"] = created
    finally:
        problems = guard.close()
        realhost.kill_pids(realhost.processes_rooted_in(root))

        shutil.rmtree(workdir, ignore_errors=True)
    if problems:
        raise SystemExit("kernel audit not restored cleanly: " + "; ".join(problems))
    rules = [e for e in entries if e["kind"] == "rule"]
    summary = {
        "distinct_lines": len(entries),
        "rules": len(rules),
        "accepted": sum(e["verdict"] == "accept" for e in rules),
        "refused": sum(e["verdict"] == "refuse" for e in rules),
        "not_executed": 0,
        "host_dependent": sum(bool(e["host_dependent"]) for e in rules),
        "control": len(entries) - len(rules),
        "commented": sum(e["commented"] for e in entries),
        "listing_if_paths_exist": sum("listing_if_paths_exist" in e for e in rules),
    }
    meta = {
        "what": "real auditctl verdicts and `auditctl -l` forms for the distinct lines of tests/data/real-rules/*",
        "generator": "tools/real_rules_truth.py",
        "auditctl": version,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "audit_state_found": found_state,
        "method": "each rule loaded alone (auditctl ARGS, ARGS = shlex.split(line)) into an empty rule set, "
                  "listed with auditctl -l, then auditctl -D; control lines classified by reading, never run; "
                  "rules refused for a missing path loaded again with the path's directories created",
        "summary": summary,
    }
    return {"meta": meta, "rules": entries}


def compare(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """Differences in verdict, error, listing and host dependence, line by line."""
    fields = ("kind", "verdict", "error", "listing", "host_dependent", "control", "sources", "commented")
    before = {e["rule"]: e for e in old["rules"]}
    after = {e["rule"]: e for e in new["rules"]}
    out = [f"only in the new truth: {r}" for r in sorted(set(after) - set(before))]
    out += [f"only in the old truth: {r}" for r in sorted(set(before) - set(after))]
    for rule in sorted(set(after) & set(before)):
        for name in fields:
            if after[rule].get(name) != before[rule].get(name):
                out.append(f"{rule}: {name} {before[rule].get(name)!r} -> {after[rule].get(name)!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: sudo .venv/bin/python tools/real_rules_truth.py "
                                            "-o /tmp/truth.json --compare tests/data/real-rules/truth.json")
    parser.add_argument("-o", "--output", required=True, type=Path, help="where to write the truth (JSON)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="directory of rule files (default: %(default)s)")
    parser.add_argument("--compare", type=Path, help="a previous truth.json: print what changed")
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        parser.error(f"--corpus {args.corpus}: not a directory")
    try:
        truth = build(args.corpus, lambda text: print(text, file=sys.stderr))
    except realhost.RealHostError as error:
        print(f"real_rules_truth: {error}", file=sys.stderr)
        return 1
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(json.dumps(truth, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: {json.dumps(truth['meta']['summary'])}")
    if args.compare is not None:
        changes = compare(truth, json.loads(args.compare.read_text(encoding="utf-8")))
        print(f"{len(changes)} difference(s) from {args.compare}")
        for change in changes:
            print("  " + change)
    return 0


if __name__ == "__main__":
    sys.exit(main())
