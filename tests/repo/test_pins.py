"""One place for every Python pin (constraints.txt) and one for the version (nodeaudit.__version__)."""

from __future__ import annotations

import importlib.metadata
import re

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import nodeaudit
from tests import REPO

CONSTRAINTS = REPO / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"constraints.txt:{number}: not NAME==VERSION: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra if Requirement(r).name != "nodeaudit"]
    return reqs


def test_every_declared_dependency_is_pinned_in_constraints_and_satisfies_its_range() -> None:
    pins = _pins()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency in pyproject.toml but has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}")


def test_no_exact_pin_outside_constraints() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for section, reqs in [("dependencies", project["dependencies"]),
                          *project.get("optional-dependencies", {}).items()]:
        for r in reqs:
            assert "==" not in r, f"pyproject.toml {section}: {r!r}: exact versions belong in constraints.txt"
    for path in ("Makefile", "Dockerfile", ".ci/run"):
        text = (REPO / path).read_text()
        assert not re.search(r"[A-Za-z0-9]==[0-9]", text), f"{path} pins a version itself: use constraints.txt"
    assert "--constraint constraints.txt" in (REPO / "Dockerfile").read_text()
    assert "-c $(CONSTRAINTS)" in (REPO / "Makefile").read_text()


def test_the_az37_line_replaces_only_the_compute_pin() -> None:
    pins = _pins()
    directive = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("#az37: ")]
    assert len(directive) == 1, "constraints.txt needs exactly one '#az37: azure-mgmt-compute==37.x' line"
    m = PIN.match(directive[0].removeprefix("#az37: "))
    assert m and canonicalize_name(m.group(1)) == "azure-mgmt-compute" and m.group(2).startswith("37.")
    assert int(pins["azure-mgmt-compute"].split(".")[0]) >= 38


def test_this_venv_holds_the_pinned_versions() -> None:
    # What `make install` made: every pinned distribution that is installed is at its pinned version.
    # (Under .venv-az37 the compute SDK is the 37.x line by design.)
    wrong = []
    for name, version in _pins().items():
        try:
            got = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if got != version and not (name == "azure-mgmt-compute" and got.startswith("37.")):
            wrong.append(f"{name} {got} (constraints.txt: {version})")
    assert not wrong, "installed versions differ from constraints.txt (run `make install`): " + ", ".join(wrong)


def test_the_version_lives_in_one_place() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "nodeaudit.__version__"}
    assert importlib.metadata.version("nodeaudit") == nodeaudit.__version__
    assert nodeaudit.DEFAULT_IMAGE.endswith(":" + nodeaudit.__version__)
    literal = re.compile(re.escape(nodeaudit.__version__))
    for path in ["Dockerfile", "Makefile", *(str(p.relative_to(REPO)) for p in (REPO / "operator").rglob("*.py"))]:
        if path == "operator/nodeaudit/__init__.py":
            continue
        assert not literal.search((REPO / path).read_text()), f"{path} repeats the version {nodeaudit.__version__}"


def test_the_deploy_image_tag_is_the_version() -> None:
    # Kustomize files are static YAML: they cannot read the version, so this keeps them equal to it.
    for kustomization in sorted((REPO / "deploy").rglob("kustomization.yaml")):
        for image in yaml.safe_load(kustomization.read_text()).get("images", []):
            if "newTag" in image:
                assert str(image["newTag"]) == nodeaudit.__version__, (
                    f"{kustomization.relative_to(REPO)}: newTag {image['newTag']} is not the version "
                    f"{nodeaudit.__version__} (operator/nodeaudit/__init__.py)")
