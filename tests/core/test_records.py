"""core/records.py on recorded auditd output: audit 3.0.9 plugin lines, audit 2.8 audispd lines,
multi-record events, interleaved serials, hex argv, with and without EOE; hypothesis: never crashes."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeaudit.core import records

DATA = Path(__file__).resolve().parents[1] / "data" / "records"
# Split on newlines only: str.splitlines() also splits at 0x1d, the separator of the enriched part.
V3 = (DATA / "auditd-3.0.9-plugin.log").read_text().rstrip("\n").split("\n")
V28 = (DATA / "auditd-2.8-audispd.log").read_text().rstrip("\n").split("\n")


def by_serial(events: list) -> dict[int, dict]:
    return {e["serial"]: e for e in events if isinstance(e, dict)}


def test_recorded_3x_exec_event_is_one_object_with_decoded_argv():
    events = by_serial(records.events(V3))
    echo = events[52]
    assert echo["ts"] == "2026-12-03T11:46:59.694Z"
    assert echo["key"] == "procmon"
    assert echo["syscall"] == "execve"
    assert echo["success"] is True and echo["exit"] == 0
    assert echo["exe"] == "/usr/bin/echo" and echo["comm"] == "echo"
    assert echo["argv"] == ["/bin/echo", "hello world", "plain", "été", 'q"uote']
    assert "argvTruncated" not in echo
    assert echo["cwd"] == "/"
    assert echo["pid"] == 5512 and echo["ppid"] == 5315
    assert echo["uid"] == 0 and echo["euid"] == 0
    assert echo["tty"] is None
    assert echo["auid"] is None and echo["ses"] is None
    assert echo["paths"] == [{"name": "/bin/echo", "nametype": "NORMAL"},
                             {"name": "/lib64/ld-linux-x86-64.so.2", "nametype": "NORMAL"}]
    assert echo["records"] == ["BPRM_FCAPS"]
    assert not any(isinstance(e, records.Unparsed) for e in records.events(V3))


def test_recorded_watch_event_takes_argv_from_proctitle_and_keeps_paths():
    watch = by_serial(records.events(V3))[70]
    assert watch["key"] == "identity"
    assert watch["syscall"] == "openat"
    assert watch["argv"] == ["touch", "/etc/passwd"]
    assert watch["paths"] == [{"name": "/etc/passwd", "nametype": "NORMAL"}]


def test_long_argument_chunks_are_joined_and_bounded():
    long = by_serial(records.events(V3))[84]
    assert long["argv"][0] == "/bin/true"
    assert set(long["argv"][1]) == {"A"}
    assert len(long["argv"][1]) == records.ARG_MAX_BYTES
    assert long["argvTruncated"] is True
    full = by_serial(records.events(V3, limits=records.Limits(argv_bytes=20000, arg_bytes=20000)))[84]
    assert full["argv"][1] == "A" * 9000 and "argvTruncated" not in full


def test_total_argv_bound():
    limits = records.Limits(argv_bytes=16, arg_bytes=100)
    echo = by_serial(records.events(V3, limits=limits))[52]
    assert sum(len(a.encode()) + 1 for a in echo["argv"]) <= 16
    assert echo["argv"][0] == "/bin/echo"
    assert echo["argvTruncated"] is True


def test_daemon_record_is_standalone_and_keeps_its_type():
    start = next(e for e in records.events(V3) if isinstance(e, dict) and e.get("type") == "DAEMON_START")
    assert start["serial"] == 2390
    assert start["auid"] is None


def test_audit_28_lines_without_eoe_node_prefix_and_32bit():
    events = by_serial(records.events(V28))
    sudo = events[4711]
    assert sudo["node"] == "aks-nodepool1-12345678-vmss000000"
    assert sudo["syscall"] == "execve"  # from the number: 2.x has no enriched part
    assert sudo["argv"] == ["sudo", "cat", "/etc/shadow", "--password=hunter2"]
    assert sudo["cwd"] == "/home/azure user "
    assert sudo["auid"] == 1000 and sudo["ses"] == 3 and sudo["uid"] == 1000 and sudo["euid"] == 0
    assert sudo["tty"] == "pts0"
    acct = events[4712]
    assert acct["type"] == "USER_ACCT" and acct["auid"] == 1000
    assert "type" not in sudo
    assert "op=PAM:accounting" in acct["msg"]
    legacy = events[4713]
    assert legacy["syscall"] == "execve"  # i386 number 11
    assert legacy["success"] is False and legacy["exit"] == -2
    assert legacy["key"] is None
    assert legacy["paths"] == [{"name": "/opt/missing", "nametype": "UNKNOWN"}]


def test_interleaved_serials_coalesce_per_event():
    lines = [line for line in V3 if "audit(1796298419.694:52)" in line or "audit(1796298419.710:70)" in line]
    mixed = []
    a = [x for x in lines if ":52)" in x]
    b = [x for x in lines if ":70)" in x]
    while a or b:  # alternate, each event keeping its own order
        if a:
            mixed.append(a.pop(0))
        if b:
            mixed.append(b.pop(0))
    got = by_serial(records.events(mixed))
    want = by_serial(records.events(lines))
    assert got == want and set(got) == {52, 70}


def test_an_event_completes_at_eoe_proctitle_or_its_last_argument_else_when_idle():
    echo = [line for line in V3 if ":52)" in line]  # SYSCALL BPRM_FCAPS EXECVE CWD PATH PATH PROCTITLE EOE
    # forensic: EOE ends it. standard drops EOE: PROCTITLE ends it.
    for kept, last in ((echo, "EOE"), ([x for x in echo if "type=EOE" not in x], "PROCTITLE")):
        c = records.Coalescer(idle=0.5)
        out = [item for line in kept for item in c.feed(line, now=10.0)]
        assert len(out) == 1 and not c.pending and kept[-1].startswith(f"type={last}")
    # lean (no PROCTITLE, no EOE): the EXECVE with every argument ends an exec...
    lean = [x for x in echo if x.startswith(("type=SYSCALL", "type=EXECVE"))]
    c = records.Coalescer(idle=0.5, excluded_types=("PROCTITLE", "EOE", "PATH", "CWD", "BPRM_FCAPS"))
    assert c.feed(lean[0], now=1.0) == []
    (done,) = c.feed(lean[1], now=1.0)
    assert isinstance(done, list)
    assert [r.type for r in done] == ["SYSCALL", "EXECVE"]
    # ...also when a long argument spans three EXECVE records.
    long = [x for x in V3 if ":84)" in x and x.startswith(("type=SYSCALL", "type=EXECVE"))]
    got = [c.feed(line, now=1.0) for line in long]
    assert got[:-1] == [[]] * (len(long) - 1) and len(got[-1]) == 1
    # Anything else waits for the idle timer.
    watch = [x for x in V3 if ":70)" in x and x.startswith("type=SYSCALL")]
    assert c.feed(watch[0], now=20.0) == []
    assert c.expire(now=20.4) == []
    (expired,) = c.expire(now=20.6)
    assert records.build_event(expired)["key"] == "identity"


def test_pending_is_bounded_oldest_first():
    c = records.Coalescer(idle=100, max_pending=2)
    out: list[Any] = []
    for serial in range(1, 5):
        out += c.feed(f"type=SYSCALL msg=audit(1.000:{serial}): pid={serial} key=\"k\"", now=0)
    assert [g[0].serial for g in out] == [1, 2]
    assert len(c.pending) == 2


def test_unparsable_line_is_passed_on_raw():
    out = records.events(["garbage that is not a record", "", *V28[:2]])
    assert out[0] == records.Unparsed("garbage that is not a record")
    assert sum(isinstance(e, records.Unparsed) for e in out) == 1
    huge = records.events(["x" * 100000])
    assert isinstance(huge[0], records.Unparsed) and len(huge[0].raw) == records.RAW_MAX_BYTES


def test_excluded_types_do_not_count():
    echo = by_serial(records.events(V3, excluded_types=("PATH", "CWD", "BPRM_FCAPS")))[52]
    assert "paths" not in echo and "cwd" not in echo and "records" not in echo
    assert echo["argv"][1] == "hello world"


def test_redaction_across_and_within_arguments():
    pats = records.compile_redactions([r"--password[= ]\S+", r"token=[^&\s]+"])
    argv, hit = records.redact(["app", "--password", "hunter2", "url?token=abc&x=1"], pats)
    assert hit and argv == ["app", "<redacted>", "<redacted>", "url?<redacted>&x=1"]
    sudo = by_serial(records.events(V28, redactions=pats))[4711]
    assert sudo["argv"][-1] == "<redacted>" and sudo["argvRedacted"] is True
    assert "hunter2" not in repr(sudo)
    assert records.redact(["a", "b"], pats) == (["a", "b"], False)


def test_bad_redaction_pattern_names_position():
    with pytest.raises(re.error) as err:
        records.compile_redactions(["ok", "--pass(word"])
    assert err.value.pos == 6


def test_shuffled_whole_events_give_the_same_objects():
    groups: dict[str, list[str]] = {}
    for line in V3:
        groups.setdefault(re.search(r"audit\(([^)]*)\)", line).group(1), []).append(line)
    order = list(groups)
    random.Random(7).shuffle(order)
    shuffled = [line for key in order for line in groups[key]]
    assert by_serial(records.events(shuffled)) == by_serial(records.events(V3))


_line = st.one_of(
    st.text(max_size=300),
    st.builds(lambda t, s, body: f"type={t} msg=audit(1700000000.{s % 1000:03d}:{s}): {body}",
              st.sampled_from(["SYSCALL", "EXECVE", "PATH", "CWD", "PROCTITLE", "EOE", "USER_ACCT", "X"]),
              st.integers(0, 10**9),
              st.text(alphabet=st.sampled_from(list('a0123456789ABCDEF=" []_()\x1d\x01né-')), max_size=200)),
    st.sampled_from(V3 + V28),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=30), st.integers(1, 64), st.integers(1, 4))
def test_fuzz_never_crashes(lines, argv_bytes, paths):
    limits = records.Limits(argv_bytes=argv_bytes, arg_bytes=argv_bytes, paths=paths)
    for item in records.events(lines, limits=limits, redactions=records.compile_redactions([r"\d{3}"])):
        if isinstance(item, dict):
            assert sum(len(a.encode("utf-8", "backslashreplace")) + 1 for a in item["argv"]) <= argv_bytes + 1
            assert len(item.get("paths", [])) <= paths
        else:
            assert len(item.raw) <= records.RAW_MAX_BYTES


def test_validate_refuses_a_bad_redact_pattern_with_its_position(tmp_path):
    import subprocess
    import sys

    doc = tmp_path / "p.yaml"
    doc.write_text("apiVersion: nodeaudit.io/v1alpha1\nkind: NodeAuditPolicy\nmetadata: {name: procmon}\n"
                   "spec:\n  presets: [procmon]\n  redact: ['--password[= ]\\S+', '--token=(\\S+']\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "nodeaudit"), "validate", str(doc)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "spec.redact[1]: bad regular expression at position 8: missing ), unterminated subpattern" in \
        proc.stdout + proc.stderr


def test_a_user_message_keeps_its_quoted_words_and_inner_fields():
    """auditctl -m (the canary), sudo and sshd write msg='...' with spaces: read whole, and the
    fields inside it (exe, res) read too."""
    line = ("type=USER msg=audit(1800000000.120:77): pid=4242 uid=0 auid=4294967295 ses=4294967295 "
            "subj=unconfined msg='text=nodeaudit-canary id=n1:0123456789ab:1800000000-7 policy=procmon "
            "exe=\"/usr/sbin/auditctl\" hostname=? addr=? terminal=? res=success'")
    (event,) = records.events([line])
    assert isinstance(event, dict)
    assert event["msg"].startswith("text=nodeaudit-canary id=n1:0123456789ab:1800000000-7 policy=procmon exe=")
    assert event["exe"] == "/usr/sbin/auditctl" and event["type"] == "USER"
