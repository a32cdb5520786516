"""Numbers and exit codes as a user meets them: nan and inf refused, check-agent's real cause and
stdin, and the exit-code table of docs/cli.md."""

from __future__ import annotations

import re

import pytest
import yaml

from nodeaudit.cli.params import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE
from tests import REPO
from tests.cli.usage import assert_one_line_error, nodeaudit
from tests.policies import EXAMPLES

POLICY = str(EXAMPLES / "procmon.yaml")
VMSS_NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "aks-user-1-vmss000000"},
             "spec": {"providerID": "azure:///subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/"
                                    "mc_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-user-1-vmss/"
                                    "virtualMachines/0"}}


@pytest.mark.parametrize(("option", "value"), [("--seconds", "nan"), ("--seconds", "inf"),
                                               ("--price-per-gb", "inf"), ("--price-per-gb", "nan"),
                                               ("--exec-rate", "inf"), ("--exec-rate", "-1")])
def test_estimate_refuses_non_finite_numbers(option: str, value: str) -> None:
    result = nodeaudit("estimate", POLICY, option, value)
    assert_one_line_error(result, EXIT_USAGE, rf"Invalid value for '{option}': ")
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_check_agent_refuses_a_timeout_that_cannot_work(value: str, tmp_path) -> None:
    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump(VMSS_NODE))
    result = nodeaudit("check-agent", "--node", str(node), "--timeout", value)
    assert_one_line_error(result, EXIT_USAGE, r"Invalid value for '--timeout': ")


def test_check_agent_reads_stdin_and_names_the_real_cause(tmp_path) -> None:
    """`--node -` reads the Node from stdin (validate and render accept `-` too). Port 1 refuses
    connections, so the check is incomplete: exit 3, not the usage error's 2 (docs/cli.md)."""
    token = tmp_path / "token"
    token.write_text("local-test-token")
    result = nodeaudit("check-agent", "--node", "-", "--endpoint", "https://127.0.0.1:1", "--timeout", "3",
                       input=yaml.safe_dump(VMSS_NODE), env={"NODEAUDIT_ARM_TOKEN_FILE": str(token)})
    assert result.code == EXIT_INCOMPLETE, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    # The deadline (3 s) comes before the SDK's retries give up: the message still names their cause
    # (it used to say only "no answer within the deadline").
    assert re.search(r"mc_rg/aks-user-1-vmss\s+1\s+-\s+Error\s+listing extensions: no answer within the "
                     r"deadline .*; last attempt: .*Connect call failed", result.stdout), result.stdout


def test_check_agent_stdin_problems_name_it() -> None:
    result = nodeaudit("check-agent", "--node", "-", input="kind: Pod\n")
    assert_one_line_error(result, EXIT_USAGE, r"--node -: document 1 is a Pod, not a Node or NodeList")


def test_exit_code_table_is_documented() -> None:
    """docs/cli.md holds the one table; the constants the commands use are the ones it lists."""
    text = (REPO / "docs" / "cli.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", text, re.M))
    assert {int(k) for k in rows} >= {EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, 130}
    assert "usage" in rows[str(EXIT_USAGE)].lower() and "incomplete" in rows[str(EXIT_INCOMPLETE)].lower()
    assert nodeaudit("validate", POLICY).code == EXIT_OK
    assert nodeaudit("validate", "/nonexistent.yaml").code == EXIT_FAILED
    assert nodeaudit("validate").code == EXIT_USAGE
