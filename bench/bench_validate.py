"""How many rules per second parse_rule checks, over a mix like real policies (not a test)."""

from __future__ import annotations

import contextlib
import time

from nodeaudit.presets import PRESETS, VOLUMES, auditd_control_rules, exclusion_rules
from nodeaudit.rules import RuleError, parse_rule

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


def main(seconds: float = 1.0) -> None:
    checked = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for rule in MIX:
            with contextlib.suppress(RuleError):
                parse_rule(rule)
        checked += len(MIX)
    elapsed = time.perf_counter() - start
    print(
        f"parse_rule: {checked / elapsed:,.0f} rules/s ({len(MIX)}-rule mix, {checked} rules in {elapsed:.2f} s)"
    )


if __name__ == "__main__":
    main()
