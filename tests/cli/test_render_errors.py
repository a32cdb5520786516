"""`nodeaudit render` as a user runs it: where it writes, what it refuses, and that a failure leaves
nothing behind (each case: exit code, one error line, no traceback, the file system unchanged)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nodeaudit.testing import simulator as sim_mod
from tests.cli.usage import NODEAUDIT, assert_one_line_error, files_under, nodeaudit
from tests.policies import EXAMPLES, policy_doc

POLICY = str(EXAMPLES / "procmon.yaml")
BUNDLE_FILES = {"apply.sh", "bundle.json", "60-nodeaudit-procmon.rules"}


def _node_file(tmp_path: Path, name: str = "aks-user1-20000002-vmss000000") -> Path:
    node = sim_mod.aks_node("user1", 0, mode="user", vmss_suffix="20000002")
    node["metadata"]["name"] = name
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(node))
    return path


def test_render_writes_a_new_directory(tmp_path: Path) -> None:
    out = tmp_path / "out" / "procmon"
    result = nodeaudit("render", POLICY, "-o", str(out))
    assert result.code == 0, result.stderr
    assert set(files_under(out)) >= BUNDLE_FILES
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_render_refuses_a_non_empty_directory_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = files_under(tmp_path)
    result = nodeaudit("render", POLICY, "-o", str(out))
    assert_one_line_error(result, 1, r"out: directory is not empty \(1 entries: notes.txt\); use --force")
    assert files_under(tmp_path) == before
    # Two policies rendered into one directory used to leave both rules files beside one bundle.json.
    other = tmp_path / "other.yaml"
    doc = policy_doc()
    doc["metadata"]["name"] = "other"
    other.write_text(yaml.safe_dump(doc))
    assert nodeaudit("render", POLICY, "-o", str(out), "--force").code == 0
    assert nodeaudit("render", str(other), "-o", str(out), "--force").code == 0
    written = set(files_under(out))
    assert "60-nodeaudit-other.rules" in written and "60-nodeaudit-procmon.rules" not in written
    assert "notes.txt" not in written


@pytest.mark.parametrize("output", ["", "/", "."])
def test_render_refuses_the_current_directory_and_the_root(tmp_path: Path, output: str) -> None:
    root_before = set(p.name for p in Path("/").iterdir())
    try:
        result = nodeaudit("render", POLICY, "-o", output, cwd=tmp_path)
        assert_one_line_error(result, 2, r"-o/--output: (give a directory|refusing to write a bundle into /)")
        assert files_under(tmp_path) == {}
    finally:
        for name in BUNDLE_FILES - root_before:  # had the check failed, do not leave a bundle in /
            Path("/", name).unlink(missing_ok=True)
    assert set(p.name for p in Path("/").iterdir()) == root_before


def test_render_node_manifest_stays_inside_the_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = nodeaudit("render", POLICY, "-o", str(out), "--node", str(_node_file(tmp_path)))
    assert result.code == 0, result.stderr
    manifest = out / "manifests" / "aks-user1-20000002-vmss000000.yaml"
    kinds = [d["kind"] for d in yaml.safe_load_all(manifest.read_text())]
    assert kinds == ["ConfigMap", "Job"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.yaml", "out"]  # nothing beside the output


@pytest.mark.parametrize(("content", "message"), [
    (None, r'node.yaml: metadata.name "x/y": not a DNS-1123 subdomain'),
    (b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe", r"node.yaml: not UTF-8 text \(byte \d+\) \(a Node in YAML or JSON"),
    (b"kind: Node\nmetadata: {name: [\n", r"node.yaml: line \d+: invalid YAML: "),
    (b"kind: Pod\nmetadata: {name: p}\n", r"node.yaml: not a Node \(found Pod\)"),
    (b"kind: Node\nmetadata: {}\n", r"node.yaml: metadata.name missing"),
])
def test_render_refuses_a_bad_node_and_writes_nothing(tmp_path: Path, content: bytes | None, message: str) -> None:
    node = _node_file(tmp_path, "x/y")
    if content is not None:
        node.write_bytes(content)
    before = files_under(tmp_path)
    result = nodeaudit("render", POLICY, "-o", str(tmp_path / "out"), "--node", str(node))
    assert_one_line_error(result, 1, message)
    assert files_under(tmp_path) == before and not (tmp_path / "out").exists()


def test_render_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = nodeaudit("render", POLICY, "-o", str(tmp_path / "afile" / "out"))
    assert_one_line_error(result, 1, r"afile/out: .*afile is a file, not a directory")
    assert files_under(tmp_path) == {"afile": b"x"}


def _unshare_usable() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _unshare_usable(), reason="needs unshare -m (root) for a private mount")


def _in_private_mount(tmp_path: Path, options: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run nodeaudit with a tmpfs mounted on tmp_path/mnt in a private mount namespace: the mount
    exists only for that process and vanishes with it."""
    script = (f'mount -t tmpfs -o {options} none "$1" && shift && "$@"; code=$?; '
              f'ls -A "{tmp_path / "mnt"}" > "{tmp_path / "listing"}"; exit $code')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(tmp_path / "mnt"), NODEAUDIT, *args],
                          capture_output=True, text=True, timeout=60)


@needs_mounts
def test_render_into_a_read_only_directory(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    proc = _in_private_mount(tmp_path, "ro", "render", POLICY, "-o", str(tmp_path / "mnt" / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"Error: {tmp_path / 'mnt' / 'out'}: cannot create: Read-only file system"]


@needs_mounts
def test_render_that_fails_half_way_leaves_the_old_output(tmp_path: Path) -> None:
    """A disk that fills up while the bundle is written: the previous output stays as it was and no
    temporary directory is left (the bundle is written beside it, then renamed into place)."""
    (tmp_path / "mnt").mkdir()
    # 12 KiB: room for the old output (one small file) but not for a whole bundle (apply.sh alone is more).
    script = ('mount -t tmpfs -o size=12k none "$1" && mkdir "$1/out" && echo old > "$1/out/previous.txt" && '
              '"$2" render "$3" -o "$1/out" --force; code=$?; ls -A "$1" > "$4"; cat "$1/out/previous.txt" >> "$4"; '
              'exit $code')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(tmp_path / "mnt"), NODEAUDIT, POLICY,
                           str(tmp_path / "listing")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"Error: {tmp_path / 'mnt' / 'out'}: cannot write: No space left on device"]
    assert (tmp_path / "listing").read_text().splitlines() == ["out", "old"]
