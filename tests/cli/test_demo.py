"""`nodeaudit demo` is the [demo] extra: without it one line says how to install it; the operator
and the other commands never need it; the demo reads its policy and CRD from the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nodeaudit.core.crd import crd
from nodeaudit.testing import demo as demo_main
from tests import REPO

# Make the extra's packages unimportable, as in an installation without it.
WITHOUT_EXTRA = "import sys\nfor name in ('kmock', 'trustme'):\n    sys.modules[name] = None\n"


def _without_extra(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRA + code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_demo_without_the_extra_names_the_install_command() -> None:
    res = _without_extra("from nodeaudit.cli.main import main\nmain(['demo'])")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "nodeaudit demo: needs the demo extra (kmock is not installed): pip install 'nodeaudit[demo]'"]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "examples/procmon.yaml"]])
def test_the_operator_and_the_other_commands_need_no_extra(args: list[str]) -> None:
    res = _without_extra(f"import nodeaudit.controller.app\nfrom nodeaudit.cli.main import main\nmain({args!r})")
    assert res.returncode == 0, res.stderr
    assert "kmock" not in res.stderr


def test_the_packaged_example_policy_is_examples_procmon() -> None:
    """The demo's default policy ships in the package (no checkout needed); it must stay the example."""
    assert demo_main.DEFAULT_POLICY.read_bytes() == (REPO / "examples" / "procmon.yaml").read_bytes(), (
        "refresh it: cp examples/procmon.yaml operator/nodeaudit/testing/data/procmon.yaml")


def test_the_demo_crd_is_the_generated_one() -> None:
    assert demo_main._crd() == crd()
