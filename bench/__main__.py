"""Run every bench/bench_*.py `main()` in turn, or only those named: `python -m bench host azure`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = [f"bench_{a.removeprefix('bench_')}" for a in argv]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted or names:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        sys.argv = [f"bench/{name}.py"]  # each benchmark runs with its own defaults
        try:
            result = importlib.import_module(f"bench.{name}").main()
        except Exception as error:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            print(f"{name} failed: {type(error).__name__}: {error}", flush=True)
            failed.append(name)
            continue
        if result not in (None, 0):
            failed.append(name)
        print(f"({name}: {time.monotonic() - started:.1f} s)", flush=True)
    if failed:
        print(f"\nbenchmarks that failed or missed a target: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
