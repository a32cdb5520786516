"""The operator's settings: each default once, read once, flags win, a bad value names its variable."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodeaudit import __version__
from nodeaudit.cli import run as cli_run
from nodeaudit.controller.config import DEFAULT_NAMESPACE, Config, SettingError
from tests import REPO

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_an_empty_environment_gives_the_declared_defaults() -> None:
    assert Config.from_env({}) == Config()
    assert Config().namespace == DEFAULT_NAMESPACE and Config().image.endswith(":" + __version__)
    assert Config().arm_ca_file is None and Config().instance == "nodeaudit"
    # Every setting read from the environment says which variable.
    variables = [f.metadata["variable"] for f in dataclasses.fields(Config) if "variable" in f.metadata]
    assert len(variables) == len(set(variables)) and "NODEAUDIT_RESYNC_SECONDS" in variables


def test_values_are_parsed_and_given_values_win() -> None:
    env = {"NODEAUDIT_NAMESPACE": "from-env", "NODEAUDIT_RETRY_LIMIT": "5", "NODEAUDIT_DEBOUNCE_SECONDS": " 0.5 ",
           "HOSTNAME": "nodeaudit-7d9f", "NODEAUDIT_RESYNC_SECONDS": ""}
    cfg = Config.from_env(env, namespace="from-flag")
    assert (cfg.namespace, cfg.retry_limit, cfg.debounce, cfg.instance, cfg.resync) == (
        "from-flag", 5, 0.5, "nodeaudit-7d9f", 60.0)
    assert isinstance(cfg.retry_limit, int)


@pytest.mark.parametrize(("env", "message"), [
    ({"NODEAUDIT_RETRY_LIMIT": "2.5"}, "NODEAUDIT_RETRY_LIMIT='2.5': expected a whole number"),
    ({"NODEAUDIT_REMOVAL_POLL_SECONDS": "0.01"}, "NODEAUDIT_REMOVAL_POLL_SECONDS='0.01': expected a finite number >= 0.05"),
    ({"NODEAUDIT_RESULT_GRACE_SECONDS": "inf"}, "NODEAUDIT_RESULT_GRACE_SECONDS='inf': expected a finite number"),
    ({"NODEAUDIT_ARM_CA_FILE": "/nonexistent/ca.pem"}, "NODEAUDIT_ARM_CA_FILE='/nonexistent/ca.pem': No such file"),
])
def test_a_bad_value_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError) as exc:
        Config.from_env(env)
    assert str(exc.value).startswith(message)


def test_the_arm_ca_file_is_checked_at_load(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    with pytest.raises(SettingError, match="no PEM certificate"):
        Config.from_env({"NODEAUDIT_ARM_CA_FILE": str(ca)})
    ca.write_text(PEM)
    assert Config.from_env({"NODEAUDIT_ARM_CA_FILE": str(ca)}).arm_ca_file == str(ca)


def test_run_checks_the_settings_without_writing_the_environment() -> None:
    before = os.environ.get("NODEAUDIT_NAMESPACE")
    result = CliRunner().invoke(cli_run.run, ["--namespace", "elsewhere"],
                                env={"KUBECONFIG": "/nonexistent", "NODEAUDIT_ARM_CA_FILE": "/nonexistent/ca.pem"})
    assert result.exit_code == 2
    assert result.output.startswith("nodeaudit run: NODEAUDIT_ARM_CA_FILE='/nonexistent/ca.pem': ")
    assert os.environ.get("NODEAUDIT_NAMESPACE") == before


def test_the_settings_table_in_the_docs_lists_every_setting_with_its_default() -> None:
    rows = {}
    for line in (REPO / "docs" / "operator.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1].strip("`")
    for f in dataclasses.fields(Config):
        if "variable" not in f.metadata:
            continue
        documented = rows.get(f.metadata["variable"])
        assert documented is not None, f"docs/operator.md: no row for {f.metadata['variable']}"
        if f.default is not None:
            assert documented == (f"{f.default:g}" if isinstance(f.default, float) else str(f.default)), f.name


def test_the_delivery_settings_are_checked_at_start():
    ok = Config.from_env({"NODEAUDIT_LOGS_ENDPOINT": "https://api.loganalytics.us/",
                          "NODEAUDIT_CLUSTER_RESOURCE_ID": "/subscriptions/s/resourceGroups/g/providers/"
                                                           "Microsoft.ContainerService/managedClusters/c"})
    assert ok.logs_endpoint == "https://api.loganalytics.us" and ok.cluster_resource_id.endswith("/managedClusters/c")
    with pytest.raises(SettingError, match="NODEAUDIT_LOGS_ENDPOINT.*https://"):
        Config.from_env({"NODEAUDIT_LOGS_ENDPOINT": "http://127.0.0.1:1"})
    with pytest.raises(SettingError, match="NODEAUDIT_CLUSTER_RESOURCE_ID.*managedClusters"):
        Config.from_env({"NODEAUDIT_CLUSTER_RESOURCE_ID": "/subscriptions/s/resourceGroups/g"})
