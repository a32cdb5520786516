"""How the host benchmarks print their targets beside the figures, and their exit status."""

from __future__ import annotations

from collections.abc import Iterable


def print_targets(checks: Iterable[tuple[str, bool, str]]) -> int:
    """One ``PASS``/``MISS`` line per (target, met, measured value); returns how many were missed."""
    misses = 0
    for name, ok, value in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {name} ({value})")
        misses += not ok
    return misses


def verdict(misses: int, problems: list[str]) -> int:
    """The benchmark's exit status: 1 when a target was missed or kernel audit was not put back."""
    if problems:
        print("  FAIL  kernel audit not fully restored (see above)")
    return 1 if misses or problems else 0
