"""Tests for presets, volumes, AKS noise filters and the expansion of a policy into one rule list."""

from __future__ import annotations

import pytest

from nodeaudit.core.presets import (
    AKS_NOISE,
    AKS_NOISE_EXECUTABLES,
    PRESETS,
    VOLUMES,
    auditd_control_rules,
    exclusion_rules,
    expand,
)
from nodeaudit.core.rules.grammar import RuleError, Unsafe, parse_rule


def test_procmon_is_exactly_the_seeds_two_execve_rules() -> None:
    seed = [
        "-a exit,always -F arch=b64 -S execve -k procmon",
        "-a exit,always -F arch=b32 -S execve -k procmon",
    ]
    assert [parse_rule(r) for r in PRESETS["procmon"].rules] == [parse_rule(r) for r in seed]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_rule_is_valid_keyed_and_documented(name: str) -> None:
    preset = PRESETS[name]
    assert preset.name == name and preset.title and "record" in preset.description.lower()
    for text in preset.rules:
        rule = parse_rule(text)
        assert rule.text == text, "presets are stored normalized"
        assert rule.keys, f"{text} has no key"


def test_identity_and_module_sets_cover_both_abis_and_the_identity_files() -> None:
    identity = [parse_rule(r) for r in PRESETS["identity"].rules]
    watched = {r.path for r in identity if r.kind == "watch"}
    assert {
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/etc/sudoers",
        "/etc/sudoers.d/",
    } <= watched
    assert {r.arch for r in identity if r.kind == "syscall"} == {"b64", "b32"}
    modules = [parse_rule(r) for r in PRESETS["modules"].rules]
    for arch in ("b64", "b32"):
        covered = {s for r in modules if r.arch == arch for s in r.syscalls}
        assert covered == {"init_module", "finit_module", "delete_module"}


def test_lean_excludes_the_five_measured_record_types_and_the_others_none() -> None:
    assert VOLUMES["lean"].rules == tuple(
        f"-a always,exclude -F msgtype={t}" for t in ("PROCTITLE", "EOE", "BPRM_FCAPS", "PATH", "CWD")
    )
    assert VOLUMES["forensic"].rules == ()
    assert VOLUMES["standard"].excluded_msgtypes == ("EOE", "BPRM_FCAPS")
    for rule in VOLUMES["lean"].rules:
        assert parse_rule(rule).listing == rule  # verified form: -a always,exclude -F msgtype=PROCTITLE


def test_exclusion_rules_are_never_rules_on_execve_for_both_abis() -> None:
    assert exclusion_rules(["/usr/bin/runc"]) == [
        "-a never,exit -F arch=b64 -S execve -F exe=/usr/bin/runc",
        "-a never,exit -F arch=b32 -S execve -F exe=/usr/bin/runc",
    ]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("runc", 'excluded executable "runc" must be an absolute path'),
        ("/usr/bin/", 'excluded executable "/usr/bin/" must be a file'),
        ("/usr/../bin/runc", "must be a normalized path"),
        ("/usr/bin/my tool", 'excluded executable "/usr/bin/my tool" contains whitespace'),
        ("/usr/bin/$x", "character '$' cannot be part of an audit rule"),
    ],
)
def test_exclusion_rules_refuse_bad_paths(path: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        exclusion_rules([path])
    assert message in str(caught.value)


def test_aks_noise_list_is_documented_absolute_paths_under_existing_system_dirs() -> None:
    assert tuple(n.path for n in AKS_NOISE) == AKS_NOISE_EXECUTABLES
    for noise in AKS_NOISE:
        # The kernel refuses an exe= rule whose directory is missing: stay in dirs every node has.
        assert noise.path.startswith("/usr/bin/") and len(noise.why) > 40


def test_control_rules_follow_the_settings_given() -> None:
    assert auditd_control_rules(rate_limit=500, backlog_limit=8192, backlog_wait_time=60000) == [
        "-b 8192",
        "-r 500",
        "--backlog_wait_time 60000",
    ]
    assert auditd_control_rules() == []
    with pytest.raises(RuleError, match="above the maximum 60000"):
        auditd_control_rules(backlog_wait_time=70000)


def test_expand_orders_control_excludes_never_presets_user_and_enable_last() -> None:
    rules = expand(
        presets=["procmon", "modules"],
        rules=["-e 1", "-w /etc/hosts -p wa -k hosts", "-f 1"],
        volume="lean",
        exclude_executables=["/opt/tools/bin/poller"],
        aks_noise=True,
        backlog_limit=8192,
    )
    kinds = [parse_rule(r) for r in rules]
    assert rules[:2] == ["-b 8192", "-f 1"]
    assert rules[2:7] == list(VOLUMES["lean"].rules)
    never = [i for i, r in enumerate(kinds) if r.action == "never"]
    always_exit = [i for i, r in enumerate(kinds) if r.action == "always" and r.list == "exit"]
    assert len(never) == 2 * (len(AKS_NOISE_EXECUTABLES) + 1)
    assert max(never) < min(always_exit), "first match wins on the exit list: never rules go first"
    assert rules[-1] == "-e 1"
    assert rules[-2] == "-w /etc/hosts -p wa -k hosts"
    assert rules.index(PRESETS["procmon"].rules[0]) < rules.index(PRESETS["modules"].rules[0])


def test_expand_drops_duplicates_keeping_the_first_and_normalizes() -> None:
    rules = expand(presets=["procmon"], rules=["-a exit,always  -F arch=b64 -S execve -k procmon"], volume="forensic")
    assert rules == list(PRESETS["procmon"].rules)


def test_expand_without_aks_noise_has_no_never_rules() -> None:
    assert not any("never" in r for r in expand(presets=["procmon"], volume="forensic"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"presets": ["procmon", "nope"]}, 'unknown preset "nope" (one of procmon, identity, modules, stig, pci-dss, ospp, cis)'),
        ({"volume": "tiny"}, 'unknown volume "tiny" (one of lean, standard, forensic)'),
        ({"rules": ["-e 2"]}, "-e 2 locks audit rules until reboot"),
        ({"rules": ["-a always,exit -S execve"]}, "-S execve needs -F arch="),
    ],
)
def test_expand_refuses_unknown_names_and_bad_rules(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError) as caught:
        expand(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_expand_passes_the_unsafe_flags_through() -> None:
    assert expand(rules=["-e 2"], volume="forensic", unsafe=Unsafe(allow_immutable=True)) == ["-e 2"]
