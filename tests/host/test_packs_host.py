"""Each compliance pack (stig, pci-dss, ospp, cis), plain and with containers: true, loads on the real
kernel through apply.sh and auditd 3.0.9, and `auditctl -l` then lists every rule of the pack
exactly as the bundle's expected.rules predicts, with its requirement's key.
"""

from __future__ import annotations

import pytest

from nodeaudit.core import packs, presets
from tests.host import hostlib
from tests.policies import policy_doc

pytestmark = pytest.mark.host


@pytest.mark.parametrize("containers", [False, True], ids=["plain", "containers"])
@pytest.mark.parametrize("pack", [p.name for p in packs.PACKS])
def test_pack_loads_on_the_real_kernel(host, pack: str, containers: bool) -> None:
    root = host.root()
    bundle = hostlib.render_policy_bundle(host.bundle(pack), policy_doc(
        pack, [], presets=[pack], volume="forensic", containers=containers))
    res = root.run_bundle(bundle)
    assert res.rc == 0 and res.result and res.result["ok"] is True, res
    expected = [line for line in (bundle / "expected.rules").read_text().splitlines() if line]
    listed = host.audit.rules()
    missing = [line for line in expected if line.strip() not in {x.strip() for x in listed}]
    assert missing == [], missing
    rules = presets.PRESETS[pack].expanded(containers)
    assert res.result["rulesLoaded"] == len(expected) >= len(rules)
    # Every listed pack rule carries a key that names one of the pack's requirements.
    chosen = next(p for p in packs.PACKS if p.name == pack)
    keys = {tok.split("=", 1)[1] for line in listed for tok in line.split() if tok.startswith("key=")}
    keys |= {line.split(" -k ")[1].split()[0] for line in listed if " -k " in line}
    assert keys and all(packs.requirement_of(k, chosen) for k in keys), keys
    assert {packs.requirement_of(k, chosen).id for k in keys} == {r.id for r in chosen.requirements}
    if containers:
        assert any("auid=-1" in line for line in listed)
