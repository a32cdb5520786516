"""Builders shared by the pure unit tests: node facts and per-node records at a fixed time."""

from __future__ import annotations

import datetime as dt

from nodeaudit.core import nodes

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
H = "sha256:" + "ab" * 32


def facts(name: str, **kw: object) -> nodes.NodeFacts:
    base = {"name": name, "uid": f"uid-{name}", "boot_id": f"boot-{name}", "ready": True,
            "labels": {"kubernetes.io/os": "linux"}}
    base.update(kw)
    return nodes.NodeFacts(**base)  # type: ignore[arg-type]


def ok_record(n: nodes.NodeFacts, bundle: str = H, when: dt.datetime = NOW, **kw: object) -> dict[str, object]:
    rec = {"bundle": bundle, "result": "ok", "time": when.isoformat(), "bootID": n.boot_id, "uid": n.uid,
           "failures": 0, "lastSuccess": when.isoformat()}
    rec.update(kw)
    return rec
