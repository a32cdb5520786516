"""The bundle renderer: content-addressed, deterministic, and sensitive to what reaches the node."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from nodeaudit.core.bundle import content_hash, render_bundle, rules_file_name
from nodeaudit.core.policy import parse_policy
from tests.policies import policy_doc


def _bundle(**spec: Any):
    return render_bundle(parse_policy(policy_doc(**spec)))


RAW_FILES = {
    "apply.sh", "job-entry.sh", "lib.sh", "bundle.env", "bundle.json", "expected.rules",
    "syslog-v3.conf", "syslog-v2.conf", rules_file_name("procmon"),
}


def test_files_of_the_seed_bundle() -> None:
    bundle = _bundle()
    assert set(bundle.files) == RAW_FILES | {
        "dispatcher.py", "records.py", "dispatcher.json", "dispatcher-v3.conf", "dispatcher-v2.conf",
        "syslog-off-v3.conf", "syslog-off-v2.conf",
    }
    assert bundle.hash.startswith("sha256:") and len(bundle.hex) == 64
    rules = bundle.files["60-nodeaudit-procmon.rules"].decode()
    assert "-a always,exit -F arch=b64 -S execve -k procmon\n" in rules
    assert "-a always,exit -F arch=b32 -S execve -k procmon\n" in rules
    # Continue past "Rule exists" (another policy's or a hand-made copy): first rule line.
    assert [line for line in rules.splitlines() if not line.startswith("#")][0] == "-c"
    v3 = bundle.files["syslog-v3.conf"].decode()
    assert "path = /sbin/audisp-syslog\n" in v3 and "type = always\n" in v3
    assert "args = LOG_INFO LOG_AUTHPRIV\n" in v3 and "format = string\n" in v3 and "direction = out\n" in v3
    v2 = bundle.files["syslog-v2.conf"].decode()
    assert "path = builtin_syslog\n" in v2 and "type = builtin\n" in v2
    manifest = json.loads(bundle.files["bundle.json"])
    assert manifest["hash"] == bundle.hash and manifest["policy"] == "procmon"
    assert manifest["files"]["apply.sh"] == "sha256:" + hashlib.sha256(bundle.files["apply.sh"]).hexdigest()
    env = dict(line.split("=", 1) for line in bundle.files["bundle.env"].decode().splitlines())
    assert env["NODEAUDIT_BUNDLE"] == bundle.hash and env["NODEAUDIT_POLICY"] == "procmon"
    assert env["NODEAUDIT_RULES_FILE"] == "60-nodeaudit-procmon.rules"
    assert env["NODEAUDIT_SYSLOG"] == "yes" and env["NODEAUDIT_ALLOW_IMMUTABLE"] == "no"


def test_raw_format_is_the_audisp_syslog_bundle_of_before() -> None:
    bundle = _bundle(syslog={"format": "raw"})
    assert set(bundle.files) == RAW_FILES
    assert "NODEAUDIT_SYSLOG_FORMAT" not in bundle.files["bundle.env"].decode()
    assert bundle.files["expected.rules"].decode().splitlines()[0] == "-a always,exclude -F msgtype=EOE"


def test_json_format_ships_the_one_parser_and_the_policy_settings() -> None:
    from nodeaudit.core import records

    bundle = _bundle(redact=[r"--password[= ]\S+"], syslog={"facility": "LOG_LOCAL3", "priority": "LOG_NOTICE"},
                     volume="lean")
    assert bundle.files["records.py"] == Path(records.__file__).read_bytes()
    config = json.loads(bundle.files["dispatcher.json"])
    assert config["facility"] == "LOG_LOCAL3" and config["priority"] == "LOG_NOTICE"
    assert config["redact"] == [r"--password[= ]\S+"]
    assert "PROCTITLE" in config["excludedTypes"]
    v3 = bundle.files["dispatcher-v3.conf"].decode()
    assert "path = @PYTHON3@\n" in v3 and "format = string\n" in v3 and "type = always\n" in v3
    assert v3.count("args = ") == 1 and len(v3.split("args = ")[1].split("\n")[0].split()) == 2
    env = bundle.files["bundle.env"].decode()
    assert "NODEAUDIT_SYSLOG_FORMAT=json\n" in env
    # The rules are the same in both forms: a node that falls back to raw ships what raw ships.
    assert bundle.files["expected.rules"] == _bundle(syslog={"format": "raw"}, volume="lean").files["expected.rules"]
    assert _bundle(redact=["other"]).hash != _bundle().hash


def test_expected_rules_are_the_kernel_listing() -> None:
    bundle = _bundle()
    expected = bundle.files["expected.rules"].decode().splitlines()
    assert expected == [
        "-a always,exclude -F msgtype=EOE",
        "-a always,exclude -F msgtype=BPRM_FCAPS",
        "-a always,exit -F arch=b64 -S execve -F key=procmon",
        "-a always,exit -F arch=b32 -S execve -F key=procmon",
    ]


def test_same_policy_same_bytes() -> None:
    first, second = _bundle(), _bundle()
    assert first.hash == second.hash
    assert dict(first.files) == dict(second.files)


@pytest.mark.parametrize(
    "change",
    [
        {"rules": ["-a always,exit -F arch=b64 -S execve -k procmon"]},
        {"rules": ["-a always,exit -F arch=b64 -S execve -k procmon2", "-a always,exit -F arch=b32 -S execve -k procmon"]},
        {"volume": "lean"},
        {"syslog": {"facility": "LOG_LOCAL6"}},
        {"syslog": {"priority": "LOG_NOTICE"}},
        {"syslog": {"enabled": False}},
        {"exclude": {"executables": ["/usr/bin/true"]}},
        {"presets": ["modules"]},
        {"auditd": {"rateLimit": 100}},
    ],
)
def test_what_reaches_the_node_changes_the_hash(change: dict[str, Any]) -> None:
    assert _bundle(**change).hash != _bundle().hash


@pytest.mark.parametrize(
    "change",
    [
        {"rollout": {"maxUnavailable": 1, "maxFailures": 0, "paused": True}},
        {"nodeSelector": {"matchLabels": {"agentpool": "x"}}},
        {"verifyInterval": "1h"},
        {"removeOnDelete": False},
        {"monitoringAgent": {"check": "None"}},
    ],
)
def test_what_stays_in_the_cluster_keeps_the_hash(change: dict[str, Any]) -> None:
    assert _bundle(**change).hash == _bundle().hash


def test_policy_name_changes_the_hash() -> None:
    other = policy_doc()
    other["metadata"] = {"name": "procmon-b"}
    assert render_bundle(parse_policy(other)).hash != _bundle().hash


def test_hash_frames_names_and_bytes() -> None:
    assert content_hash({"a": b"bc"}) != content_hash({"ab": b"c"})
    assert content_hash({"a": b"1", "b": b"2"}) == content_hash({"b": b"2", "a": b"1"})


def test_write_creates_the_files(tmp_path: Path) -> None:
    bundle = _bundle()
    written = bundle.write(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(bundle.files)
    assert (tmp_path / "out" / "apply.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "bundle.json").stat().st_mode & 0o777 == 0o644
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_never_rules_come_before_always_rules() -> None:
    bundle = _bundle(exclude={"executables": ["/usr/bin/true"]})
    lines = [r.text for r in bundle.rules]
    never = [i for i, line in enumerate(lines) if line.startswith("-a never,exit")]
    always = [i for i, line in enumerate(lines) if line.startswith("-a always,exit")]
    assert never and always and max(never) < min(always)


def test_nothing_from_the_policy_reaches_bundle_env_unchecked() -> None:
    bundle = _bundle()
    for line in bundle.files["bundle.env"].decode().splitlines():
        key, value = line.split("=", 1)
        assert all(ch.isalnum() or ch in "._:/,-" for ch in value), line


def test_procmon_preset_is_the_seed_rules() -> None:
    """The preset and the hand-written seed rules are the same bytes on the node, so the same hash."""
    assert _bundle(presets=["procmon"], rules=[]).hash == _bundle().hash
