"""The compliance packs: every rule valid for auditctl 3.0.9, keyed by its requirement, and the
container twins that `containers: true` adds. (tests/host/test_packs_host.py loads them.)"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nodeaudit.cli.main import main
from nodeaudit.core import packs, presets
from nodeaudit.core.bundle import render_bundle
from nodeaudit.core.policy import parse_policy
from nodeaudit.core.rules.grammar import parse_rule

PACKS = {p.name: p for p in packs.PACKS}


def test_the_four_packs_are_presets_and_name_their_benchmark() -> None:
    assert set(PACKS) == {"stig", "pci-dss", "ospp", "cis"}
    assert "PCI DSS v3.1" in PACKS["pci-dss"].benchmark
    assert "Ubuntu 22.04 LTS STIG" in PACKS["stig"].benchmark
    assert "v4.2" in PACKS["ospp"].benchmark
    assert "CIS Ubuntu Linux 22.04 LTS Benchmark v1.0.0" in PACKS["cis"].benchmark
    for pack in packs.PACKS:
        assert presets.PRESETS[pack.name].rules == pack.rules
        assert presets.PRESETS[pack.name].benchmark == pack.benchmark


@pytest.mark.parametrize("name", sorted(PACKS))
def test_every_pack_rule_parses_and_its_key_names_its_requirement(name: str) -> None:
    pack = PACKS[name]
    ids = [r.id for r in pack.requirements]
    assert len(ids) == len(set(ids))
    for requirement in pack.requirements:
        assert requirement.rules, requirement.id
        for text in requirement.rules:
            rule = parse_rule(text)
            (key,) = rule.keys
            assert key.startswith(requirement.id + "-"), (key, requirement.id)
            assert packs.requirement_of(key, pack) == requirement
            if rule.kind == "syscall" and rule.syscalls:
                assert rule.arch in ("b64", "b32")
    assert len(set(pack.rules)) == len(pack.rules)  # no rule is lost to expand()'s de-duplication


def test_requirement_of_takes_the_longest_id() -> None:
    pack = PACKS["ospp"]
    assert packs.requirement_of("OSPP-1-create-failed-unsuccessful", pack).id == "OSPP-1-create-failed"
    assert packs.requirement_of("OSPP-1-create-success-successful", pack).id == "OSPP-1-create-success"
    assert packs.requirement_of("procmon", pack) is None


def test_pci_keys_are_audit_userspaces() -> None:
    keys = {parse_rule(r).keys[0] for r in PACKS["pci-dss"].rules}
    assert {"10.2.5.c-accounts", "10.2.3-access-audit-trail", "10.4.2.b-time-change"} <= keys


def test_container_variant_adds_an_unset_auid_twin_after_each_login_user_rule() -> None:
    rules = (
        "-a always,exit -F arch=b64 -S chmod -F auid>=1000 -F auid!=unset -k CIS-4.1.3.9-perm_mod",
        "-w /etc/passwd -p wa -k CIS-4.1.3.8-identity",
        "-a always,exit -F path=/usr/bin/su -F perm=x -F auid>=500 -F auid!=4294967295 -k x",
    )
    assert packs.container_variant(rules) == (
        rules[0],
        "-a always,exit -F arch=b64 -S chmod -F auid=unset -k CIS-4.1.3.9-perm_mod",
        rules[1],
        rules[2],
        "-a always,exit -F path=/usr/bin/su -F perm=x -F auid=unset -k x",
    )
    assert parse_rule(packs.container_variant(rules)[1]).listing == (
        "-a always,exit -F arch=b64 -S chmod -F auid=-1 -F key=CIS-4.1.3.9-perm_mod")


@pytest.mark.parametrize("name", sorted(PACKS))
def test_containers_true_reaches_the_bundle(name: str) -> None:
    def bundle_rules(containers: bool) -> list[str]:
        policy = parse_policy({"metadata": {"name": "p"}, "spec": {"presets": [name], "containers": containers,
                                                                   "volume": "forensic"}})
        return [r.text for r in render_bundle(policy).rules]

    plain, with_containers = bundle_rules(False), bundle_rules(True)
    twins = [r for r in with_containers if "-F auid=unset" in r]
    assert len(with_containers) == len(plain) + len(twins) and set(plain) <= set(with_containers)
    if name != "pci-dss":
        assert len(twins) >= 10


def test_presets_show_prints_rules_by_requirement() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["presets", "--show", "pci-dss"])
    assert out.exit_code == 0
    assert out.stdout.splitlines()[0].startswith("preset pci-dss: PCI DSS audit trail (PCI DSS v3.1")
    assert "\n10.2.5.c  All changes, additions or deletions to any account\n" in out.stdout
    assert "  -a always,exit -F path=/etc/passwd -F perm=wa -k 10.2.5.c-accounts\n" in out.stdout
    as_json = json.loads(runner.invoke(main, ["presets", "--show", "cis", "--containers", "--json"]).stdout)
    assert as_json["containers"] is True
    assert [r["id"] for r in as_json["requirements"]][:2] == ["CIS-4.1.3.1", "CIS-4.1.3.2"]
    assert any("-F auid=unset" in rule for r in as_json["requirements"] for rule in r["rules"])
    bad = runner.invoke(main, ["presets", "--show", "nope"])
    assert bad.exit_code == 2 and 'unknown preset "nope"' in bad.output
