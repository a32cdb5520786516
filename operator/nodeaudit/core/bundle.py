"""Policy → bundle: the exact files that run as root on a node, content-addressed.

The hash names the ConfigMap, the host directory and the Job label, so it must change whenever
anything that reaches the node changes, and only then: rollout pacing, selectors and the Azure
check are not part of the bundle. Nothing from the policy is ever placed on a shell command line:
values the shell reads travel in `bundle.env`, restricted to a safe alphabet and parsed, not sourced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from nodeaudit.core import presets as presets_mod
from nodeaudit.core.policy import NodeAuditPolicy
from nodeaudit.core.rules import grammar as rules_mod

BUNDLE_SCHEMA = 1
HOST_BUNDLES_DIR = "/var/lib/nodeaudit/bundles"
INSTALL_TIMEOUT_SECONDS = 300
_ENV_VALUE = re.compile(r"[A-Za-z0-9._:/,-]*")
# Scripts shipped verbatim from the package; the rest is generated.
_HOST_SCRIPTS = ("apply.sh", "job-entry.sh", "lib.sh")
# The node-side dispatcher (syslog.format json): the script and the one parser it imports, the
# very file nodeaudit.core.records is, so operator and node never parse records two ways.
DISPATCHER_FILES = ("dispatcher.py", "records.py")
DISPATCHER_DIR = "/var/lib/nodeaudit/dispatcher"
DISPATCHER_STATE = "/var/lib/nodeaudit/state/dispatcher.json"


def rules_file_name(policy_name: str) -> str:
    """The one file in /etc/audit/rules.d/ a policy owns."""
    return f"60-nodeaudit-{policy_name}.rules"


@dataclass(frozen=True)
class Bundle:
    """The rendered files of one policy and their content hash."""

    policy: str
    hash: str
    files: Mapping[str, bytes] = field(repr=False)
    rules: tuple[rules_mod.AuditRule, ...] = field(repr=False, default=())

    @property
    def hex(self) -> str:
        """The hash without its `sha256:` prefix: the host directory and ConfigMap suffix."""
        return self.hash.split(":", 1)[1]

    @property
    def host_dir(self) -> str:
        return f"{HOST_BUNDLES_DIR}/{self.hex}"

    def write(self, directory: Path) -> list[Path]:
        """Write every file into `directory` (created if missing); returns the paths written."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name in sorted(self.files):
            target = directory / name
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(self.files[name])
            os.chmod(tmp, 0o755 if name.endswith(".sh") else 0o644)
            os.replace(tmp, target)
            written.append(target)
        return written


def content_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over names and bytes, framed so that no two file sets collide by concatenation."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return "sha256:" + digest.hexdigest()


def _host_script(name: str) -> bytes:
    return resources.files("nodeaudit").joinpath("host", name).read_bytes()


def _env_file(values: Mapping[str, str]) -> bytes:
    lines = []
    for key, value in values.items():
        if not _ENV_VALUE.fullmatch(value):
            # Unreachable for a validated policy; kept so a future field cannot smuggle shell text.
            raise ValueError(f"bundle.env value for {key} has characters outside [A-Za-z0-9._:/,-]")
        lines.append(f"{key}={value}\n")
    return "".join(lines).encode()


def _plugin_config(policy: NodeAuditPolicy, *, version: int, active: bool = True) -> bytes:
    syslog = policy.spec.syslog
    path, kind = ("/sbin/audisp-syslog", "always") if version == 3 else ("builtin_syslog", "builtin")
    why = ("audit records to syslog for the monitoring agent" if active
           else "off: the nodeaudit dispatcher (nodeaudit.conf) forwards the records instead")
    return (
        f"# managed by nodeaudit: {why}\n"
        f"active = {'yes' if active else 'no'}\n"
        "direction = out\n"
        f"path = {path}\n"
        f"type = {kind}\n"
        f"args = {syslog.priority} {syslog.facility}\n"
        "format = string\n"
    ).encode()


def _dispatcher_file(name: str) -> bytes:
    if name == "records.py":
        return resources.files("nodeaudit").joinpath("core", "records.py").read_bytes()
    return _host_script(name)


def dispatcher_config(policy: NodeAuditPolicy) -> bytes:
    """What the dispatcher reads on the node: facility, priority, redaction and the record types
    the volume does not count (the kernel drops them already; this keeps them out if they come)."""
    spec = policy.spec
    config = {
        "policy": policy.name,
        "facility": spec.syslog.facility,
        "priority": spec.syslog.priority,
        "redact": list(spec.redact),
        "excludedTypes": list(presets_mod.VOLUMES[spec.volume].excluded_msgtypes),
        "stateFile": DISPATCHER_STATE,
    }
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _dispatcher_plugin_config(version: int) -> bytes:
    """The plugin config apply.sh installs; @PYTHON3@ becomes the node's python3 (an absolute,
    resolved path: auditd runs `path` with at most two `args`)."""
    return (
        "# managed by nodeaudit: one JSON syslog message per audit event (nodeaudit dispatcher)\n"
        "active = yes\n"
        "direction = out\n"
        "path = @PYTHON3@\n"
        "type = always\n"
        f"args = {DISPATCHER_DIR}/dispatcher.py {DISPATCHER_DIR}/config.json\n"
        "format = string\n"
    ).encode()


def parsed_rules(policy: NodeAuditPolicy) -> tuple[rules_mod.AuditRule, ...]:
    """The policy's expanded rules, parsed and normalized, in load order."""
    unsafe = policy.spec.unsafe_flags()
    return tuple(rules_mod.parse_rule(text, unsafe=unsafe) for text in policy.expanded_rules())


def render_rules_file(policy: NodeAuditPolicy, rules: tuple[rules_mod.AuditRule, ...]) -> bytes:
    header = (
        f"## Managed by nodeaudit for NodeAuditPolicy {policy.name}; changes here are overwritten.\n"
        "## Order matters: 'never' rules come before 'always' rules (first match wins).\n"
        "## -c: keep loading past a rule the kernel already has (another policy's copy, or a\n"
        "## hand-made file from before nodeaudit); apply.sh verifies every rule afterwards.\n"
        "-c\n"
    )
    return (header + "".join(rule.text + "\n" for rule in rules)).encode()


def render_bundle(policy: NodeAuditPolicy) -> Bundle:
    """Every file of the policy's bundle, plus bundle.json carrying the hash."""
    rules = parsed_rules(policy)
    rules_name = rules_file_name(policy.name)
    expected = "".join(rule.listing + "\n" for rule in rules if rule.listing is not None)
    files: dict[str, bytes] = {name: _host_script(name) for name in _HOST_SCRIPTS}
    files[rules_name] = render_rules_file(policy, rules)
    files["expected.rules"] = expected.encode()
    files["syslog-v3.conf"] = _plugin_config(policy, version=3)
    files["syslog-v2.conf"] = _plugin_config(policy, version=2)
    spec = policy.spec
    json_format = spec.syslog.enabled and spec.syslog.format == "json"
    if json_format:
        for name in DISPATCHER_FILES:
            files[name] = _dispatcher_file(name)
        files["dispatcher.json"] = dispatcher_config(policy)
        files["dispatcher-v3.conf"] = _dispatcher_plugin_config(3)
        files["dispatcher-v2.conf"] = _dispatcher_plugin_config(2)
        files["syslog-off-v3.conf"] = _plugin_config(policy, version=3, active=False)
        files["syslog-off-v2.conf"] = _plugin_config(policy, version=2, active=False)
    provisional_env = {
        "NODEAUDIT_POLICY": policy.name,
        "NODEAUDIT_RULES_FILE": rules_name,
        "NODEAUDIT_SYSLOG": "yes" if spec.syslog.enabled else "no",
        "NODEAUDIT_ALLOW_IMMUTABLE": "yes" if spec.unsafe.allow_immutable else "no",
        "NODEAUDIT_ALLOW_PANIC": "yes" if spec.unsafe.allow_panic else "no",
        "NODEAUDIT_INSTALL_TIMEOUT": str(INSTALL_TIMEOUT_SECONDS),
    }
    if json_format:
        provisional_env["NODEAUDIT_SYSLOG_FORMAT"] = "json"
    # The env names its own bundle hash, so hash everything else first, then add the env file
    # under a hash of the rest (which bundle.env only restates).
    body_hash = content_hash({**files, "bundle.env": _env_file(provisional_env)})
    files["bundle.env"] = _env_file({"NODEAUDIT_BUNDLE": body_hash, **provisional_env})
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "hash": body_hash,
        "policy": policy.name,
        "rulesFile": rules_name,
        "rules": len(rules),
        "files": {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    files["bundle.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return Bundle(policy=policy.name, hash=body_hash, files=files, rules=rules)


def read_bundle_manifest(directory: Path) -> dict[str, object]:
    """bundle.json of a written bundle (for tests and the CLI's summary)."""
    data: dict[str, object] = json.loads((directory / "bundle.json").read_text())
    return data
