"""Policies from files, directories and stdin: every document checked once, with its file, document
and line, and the problem named the same way everywhere (``FILE:LINE: NAME: spec.rules[0]: ...``).

Why in the core: ``nodeaudit validate/render/estimate/check-agent`` and the demo all read policy
files the same way (multi-document YAML, ``kind: List`` and NodeAuditPolicyList expanded, other kinds
skipped, each policy parsed and its bundle rendered), and a pre-merge check must point at the line
to fix (``-o json``, GitHub annotations). Inputs are capped in size before they are parsed: a 50 MB
stream took 13 s and 585 MB, and ``/dev/zero`` never ends. A LoadError's message is what a user sees.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from nodeaudit.core import bundle as bundle_mod
from nodeaudit.core import policy as policy_mod

# libyaml's loader is ~10x faster than the pure-Python one and parses the same documents.
YAML_LOADER = policy_mod.UniqueKeyLoader  # the safe loader (libyaml's); duplicate keys refused
DEFAULT_MAX_MIB = 16.0
YAML_SUFFIXES = (".yaml", ".yml", ".json")
LIST_KINDS = ("List", policy_mod.KIND + "List")


class InputError(Exception):
    """An input that cannot be read at all: one line naming it."""


class LoadError(ValueError):
    """A policy file that does not hold the one usable policy asked for; the message says why."""


@dataclass(frozen=True)
class Problem:
    """One finding, located: file, document (1-based, in the YAML stream), item (in a List) and line."""

    file: str
    message: str
    document: int | None = None
    line: int | None = None
    policy: str | None = None
    item: int | None = None
    severity: str = "error"  # error | warning

    def text(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        # as compilers print them: a warning says so, an error is the unmarked default
        label = "warning: " if self.severity == "warning" else ""
        return f"{where}: {label}{self.policy + ': ' if self.policy else ''}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_text(path: str, max_bytes: int) -> tuple[str, str]:
    """(name for messages, text) of a file or ``-`` (stdin), refusing more than ``max_bytes``."""
    source = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
    except IsADirectoryError:
        raise InputError(f"{source}: is a directory") from None
    except OSError as error:
        raise InputError(f"{source}: cannot read: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise InputError(f"{source}: larger than {_size(max_bytes)} (the input cap; raise it with --max-size MiB)")
    try:
        return source, data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{source}: not UTF-8 text (byte {error.start})") from None


def _size(n: int) -> str:
    return f"{n / 1048576:g} MiB" if n >= 1048576 else f"{n} bytes"


def expand_paths(paths: tuple[str, ...], recursive: bool) -> Iterator[str | Problem]:
    """Files to read: each argument, or the YAML/JSON files of a directory (its subdirectories too
    with ``recursive``, like ``kubectl -f DIR -R``)."""
    for path in paths:
        if path == "-" or not os.path.isdir(path):
            yield path
            continue
        found: list[str] = []
        try:
            if recursive:
                for root, dirs, names in os.walk(path, onerror=_raise):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    found.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(YAML_SUFFIXES))
            else:
                found = [os.path.join(path, n) for n in sorted(os.listdir(path))
                         if n.endswith(YAML_SUFFIXES) and os.path.isfile(os.path.join(path, n))]
        except OSError as error:
            yield Problem(path, f"cannot read: {error.strerror or error}")
            continue
        yield from found


def _raise(error: OSError) -> None:
    raise error


class LoadedPolicy:
    """A policy document with where it came from, for messages."""

    def __init__(self, source: str, index: int, raw: Any, policy: policy_mod.NodeAuditPolicy | None,
                 problems: list[str], node: yaml.Node | None = None, item: int | None = None):
        self.source = source
        self.index = index
        self.raw = raw
        self.policy = policy
        self.problems = problems
        self.item = item
        self.line = node.start_mark.line + 1 if node is not None else None
        self._name_line = line_of(node, "metadata.name:")
        # A valid policy keeps no YAML node graph (27,000 policies held 800 MB): only its lines.
        self.node = node if problems else None

    @property
    def name(self) -> str:
        return policy_mod.policy_display_name(self.raw, self.item if self.item is not None else self.index)

    @property
    def label(self) -> str:
        return f"{self.source}: {self.name}"

    def locate(self, message: str, severity: str = "error") -> Problem:
        """A problem of this document, at the line of the field its message starts with."""
        if self.node is not None:
            line = line_of(self.node, message)
        else:
            line = self._name_line if message.startswith("metadata.name") else self.line
        return Problem(self.source, message, self.index + 1, line, self.name, self.item, severity)


_PATH_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\.")


def line_of(node: yaml.Node | None, message: str) -> int | None:
    """The line of the deepest node named by the field path a message starts with
    (``spec.rules[1]: ...`` → the line of the second rule), else the document's first line."""
    if node is None:
        return None
    path = message.split(":", 1)[0].strip()
    current = node
    pos = 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        if m.group(1) is not None and isinstance(current, yaml.MappingNode):
            nxt = next((v for k, v in current.value if getattr(k, "value", None) == m.group(1)), None)
        elif m.group(2) is not None and isinstance(current, yaml.SequenceNode):
            i = int(m.group(2))
            nxt = current.value[i] if i < len(current.value) else None
        elif m.group(0) == ".":
            continue
        else:
            nxt = None
        if nxt is None:
            break
        current = nxt
    return int(current.start_mark.line) + 1


def is_policy_document(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return True  # not a Kubernetes object at all: report it rather than skip it
    api_version = str(doc.get("apiVersion", ""))
    return doc.get("kind") == policy_mod.KIND or api_version.startswith(policy_mod.API_GROUP + "/") or (
        "kind" not in doc and "spec" in doc
    )


def _stream(text: str) -> Iterator[tuple[int, Any, yaml.Node]]:
    """(index, document, node) of every non-empty document of a YAML stream."""
    loader = YAML_LOADER(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                doc = loader.construct_document(node)
                if doc is not None:
                    yield index, doc, node
            index += 1
    finally:
        loader.dispose()


def _check(source: str, index: int, doc: Any, node: yaml.Node | None, item: int | None) -> LoadedPolicy:
    try:
        policy = policy_mod.parse_policy(doc)
        bundle_mod.render_bundle(policy)  # the expanded rules must render, not only parse
        return LoadedPolicy(source, index, doc, policy, [], node, item)
    except policy_mod.PolicyError as error:
        return LoadedPolicy(source, index, doc, None, error.problems, node, item)


def load_documents(paths: tuple[str, ...], *, recursive: bool = False,
                   max_bytes: int = int(DEFAULT_MAX_MIB * 1048576)) -> Iterator[LoadedPolicy | Problem]:
    """Policies from files, directories and stdin (multi-document YAML, ``kind: List`` and
    ``NodeAuditPolicyList`` expanded); a Problem is about a whole input, not one policy."""
    for path in expand_paths(paths, recursive):
        if isinstance(path, Problem):
            yield path
            continue
        try:
            source, text = read_text(path, max_bytes)
        except InputError as error:
            file, _, message = str(error).partition(": ")
            yield Problem(file, message)
            continue
        try:
            for index, doc, node in _stream(text):
                if isinstance(doc, dict) and doc.get("kind") in LIST_KINDS and isinstance(doc.get("items"), list):
                    items = node.value if isinstance(node, yaml.MappingNode) else []
                    item_nodes: list[yaml.Node] = next((v.value for k, v in items if getattr(k, "value", None) == "items"
                                       and isinstance(v, yaml.SequenceNode)), [])
                    for i, entry in enumerate(doc["items"]):
                        if is_policy_document(entry):
                            yield _check(source, index, entry, item_nodes[i] if i < len(item_nodes) else node, i)
                elif is_policy_document(doc):
                    yield _check(source, index, doc, node, None)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            yield Problem(source, f"invalid YAML: {getattr(error, 'problem', None) or error}",
                          line=mark.line + 1 if mark is not None else None)


def single_policy(path: str, name: str | None, pick: str = "--policy NAME") -> LoadedPolicy:
    """The one policy in `path` (or the one called `name`), or a LoadError saying what is wrong.

    ``pick``: the command's option that names a policy, for the message when `path` holds several."""
    loaded = list(load_documents((path,)))
    errors = [item.text() for item in loaded if isinstance(item, Problem)]
    if errors:
        raise LoadError("\n".join(errors))
    docs = [item for item in loaded if isinstance(item, LoadedPolicy)]
    names = ", ".join(d.name for d in docs) or "none"
    chosen = docs if name is None else [d for d in docs if d.name == name]
    if name is not None and not chosen:
        raise LoadError(f'{path}: no NodeAuditPolicy named "{name}" (found: {names})')
    bad = [d.locate(problem).text() for d in chosen for problem in d.problems]
    if bad:
        raise LoadError("invalid policy:\n" + "\n".join(bad))
    if len(chosen) != 1:
        raise LoadError(f"{path}: expected exactly one NodeAuditPolicy (found: {names}); pick one with {pick}")
    return chosen[0]
