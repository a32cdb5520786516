"""Policies from YAML files: every document checked once, with where it came from.

Why in the core: ``nodeaudit validate/render/estimate/check-agent`` and the demo all read policy
files the same way (multi-document YAML, other kinds skipped, each policy parsed and its bundle
rendered) and name a problem the same way (``FILE: NAME: spec.rules[0]: ...``). The commands and
the demo import this downward; a LoadError's message is the one line a user sees.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from nodeaudit.core import bundle as bundle_mod
from nodeaudit.core import policy as policy_mod


class LoadError(ValueError):
    """A policy file that does not hold the one usable policy asked for; the message says why."""


class LoadedPolicy:
    """A policy document with where it came from, for messages."""

    def __init__(self, source: str, index: int, raw: Any, policy: policy_mod.NodeAuditPolicy | None,
                 problems: list[str], warnings: list[str] | None = None):
        self.source = source
        self.index = index
        self.raw = raw
        self.policy = policy
        self.problems = problems
        self.warnings = warnings or []  # policy_mod.policy_warnings: valid, but reaching beyond the policy

    @property
    def label(self) -> str:
        return f"{self.source}: {policy_mod.policy_display_name(self.raw, self.index)}"


def _read_source(path: str) -> tuple[str, str]:
    if path == "-":
        return "<stdin>", sys.stdin.read()
    return path, Path(path).read_text(encoding="utf-8")


def _is_policy_document(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return True  # not a Kubernetes object at all: report it rather than skip it
    api_version = str(doc.get("apiVersion", ""))
    return doc.get("kind") == policy_mod.KIND or api_version.startswith(policy_mod.API_GROUP + "/") or (
        "kind" not in doc and "spec" in doc
    )


def load_documents(paths: tuple[str, ...]) -> Iterator[LoadedPolicy | str]:
    """Policies from files (multi-document YAML); a str is a problem that is not about one policy."""
    for path in paths:
        try:
            source, text = _read_source(path)
        except OSError as error:
            yield f"{path}: cannot read: {error.strerror or error}"
            continue
        except UnicodeDecodeError:
            yield f"{path}: not UTF-8 text"
            continue
        try:
            documents = policy_mod.load_yaml_documents(text)  # duplicate keys refused
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            yield f"{source}: {where}invalid YAML: {getattr(error, 'problem', None) or error}"
            continue
        for index, doc in policy_mod.iter_documents(documents):
            if not _is_policy_document(doc):
                continue
            try:
                policy = policy_mod.parse_policy(doc)
                bundle_mod.render_bundle(policy)  # the expanded rules must render, not only parse
                yield LoadedPolicy(source, index, doc, policy, [], policy_mod.policy_warnings(policy))
            except policy_mod.PolicyError as error:
                yield LoadedPolicy(source, index, doc, None, error.problems)


def single_policy(path: str, name: str | None, pick: str = "--policy NAME") -> LoadedPolicy:
    """The one policy in `path` (or the one called `name`), or a LoadError saying what is wrong.

    ``pick``: the command's option that names a policy, for the message when `path` holds several."""
    loaded = list(load_documents((path,)))
    errors = [item for item in loaded if isinstance(item, str)]
    if errors:
        raise LoadError("\n".join(errors))
    documents = [item for item in loaded if not isinstance(item, str)]
    names = ", ".join(policy_mod.policy_display_name(d.raw, d.index) for d in documents) or "none"
    chosen = documents if name is None else [
        d for d in documents if policy_mod.policy_display_name(d.raw, d.index) == name]
    if name is not None and not chosen:
        raise LoadError(f'{path}: no NodeAuditPolicy named "{name}" (found: {names})')
    bad = [f"{d.label}: {problem}" for d in chosen for problem in d.problems]
    if bad:
        raise LoadError("invalid policy:\n" + "\n".join(bad))
    if len(chosen) != 1:
        raise LoadError(f"{path}: expected exactly one NodeAuditPolicy (found: {names}); pick one with {pick}")
    return chosen[0]
