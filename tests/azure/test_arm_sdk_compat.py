"""azure-mgmt-compute 37.x (msrest models, ``ext.type_properties_type``) and >= 38 (TypeSpec models,
``ext.properties.type``; ``ext.type`` is the ARM resource type) both give the same facts."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from nodeaudit.azure.facts import extension_fact
from nodeaudit.testing.armserver import ama
from tests import REPO

COMPUTE = version("azure-mgmt-compute")
MAJOR = int(COMPUTE.split(".")[0])


def _model(payload: dict):
    from azure.mgmt.compute.models import VirtualMachineScaleSetExtension

    if MAJOR >= 38:
        return VirtualMachineScaleSetExtension(payload)
    return VirtualMachineScaleSetExtension.deserialize(payload)  # type: ignore[attr-defined] # msrest models (37.x)


def test_extension_fact_reads_the_type_for_this_sdk_generation():
    m = _model(ama("Failed"))
    if MAJOR >= 38:
        assert m.type == "Microsoft.Compute/virtualMachineScaleSets/extensions" and m.properties.type == "AzureMonitorLinuxAgent"
        assert not hasattr(m, "type_properties_type")
    else:
        assert m.type_properties_type == "AzureMonitorLinuxAgent"
    f = extension_fact(m)
    assert (f.name, f.type, f.publisher, f.provisioning_state) == (
        "AzureMonitorLinuxAgent", "AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor", "Failed")
    assert extension_fact(_model({})).type is None


def _az37_python() -> str | None:
    for cand in (os.environ.get("NODEAUDIT_AZ37_PYTHON"), str(REPO / ".venv-az37" / "bin" / "python")):
        if cand and Path(cand).exists():
            return cand
    return None


@pytest.mark.skipif(MAJOR < 38, reason="already running under azure-mgmt-compute 37.x")
def test_the_azure_suite_passes_under_azure_mgmt_compute_37():
    py = _az37_python()
    if py is None:
        pytest.skip("no azure-mgmt-compute 37.x venv: set NODEAUDIT_AZ37_PYTHON or create .venv-az37 "
                    "(make .venv-az37/.stamp)")
    got = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('azure-mgmt-compute'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert got.startswith("37."), got
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    r = subprocess.run(
        [py, "-m", "pytest", "tests/azure", "-q", "-p", "no:cacheprovider",
         "-k", "not the_azure_suite_passes"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    sys.stdout.write(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
