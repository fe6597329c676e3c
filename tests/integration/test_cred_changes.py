"""uid_change, gid_change and session_id_change documents from real set*id and setsid calls, as Elastic Defend
writes them (event.type change), and Elastic's rules that read them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel

# A root child that drops to nobody the way a daemon does (setsid, setgroups, setgid, setuid), with a no-op
# setuid(0) and setgid(0) first, which must make no document, then execs /bin/true.
DROP = textwrap.dedent("""
    import os, sys
    os.setuid(0)
    os.setgid(0)
    os.setsid()
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    print(os.getpid(), flush=True)
    sys.stdin.read()
    os.execv("/bin/true", ["/bin/true", "dropped"])
""")


def _changes(sensor: SensorProcess, pid: int) -> list[dict]:
    return [d for d in sensor.docs if get(d, "process.pid") == pid and get(d, "event.type") == ["change"]]


def test_set_id_and_setsid_calls_make_change_documents_once_each() -> None:
    with SensorProcess() as sensor:
        child = subprocess.Popen([sys.executable, "-c", DROP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        pid = int(child.stdout.readline())
        child.communicate("", timeout=30)
        sensor.exec_of(pid)  # the exec of /bin/true after the changes: they are all in by then
        sensor.wait_for(lambda d: get(d, "process.pid") == pid and get(d, "event.action") == "uid_change")
        changes = _changes(sensor, pid)
    actions = [get(d, "event.action") for d in changes]
    assert actions == ["session_id_change", "gid_change", "uid_change"], actions
    session, gid, uid = changes
    assert get(session, "process.entity_id") == get(uid, "process.entity_id")
    assert get(gid, "group.id") == "65534" and get(gid, "group.Ext.real.id") == "65534"
    assert get(gid, "user.id") == "0"  # the uid had not changed yet
    assert get(uid, "user.id") == "65534" and get(uid, "user.Ext.real.id") == "65534"
    assert get(uid, "process.user.id") == "65534" and get(uid, "process.real_user.id") == "65534"
    assert get(uid, "event.category") == ["process"] and get(uid, "event.kind") == "event"
    assert len({get(d, "event.id") for d in changes}) == 3
    # the later exec document carries the new ids
    exec_doc = next(d for d in sensor.docs if get(d, "process.pid") == pid and get(d, "event.action") == "exec"
                    and get(d, "process.args") == ["/bin/true", "dropped"])
    assert get(exec_doc, "user.id") == "65534"
    # the capability sets after the exec, from the task's creds: nobody keeps none, root (the sensor's test
    # runner) has them all
    assert get(exec_doc, "process.thread.capabilities.effective") == []
    assert get(exec_doc, "process.thread.capabilities.permitted") == []
    root_exec = next(d for d in sensor.docs if get(d, "process.pid") == pid and get(d, "event.action") == "exec"
                     and get(d, "user.id") == "0")
    assert "CAP_SYS_ADMIN" in get(root_exec, "process.thread.capabilities.effective")


RULE = """
[rule]
rule_id = "0d7c2f8e-0000-4000-8000-00000000cred"
name = "Daemon dropped to nobody"
description = "A new session whose process then gives up root"
type = "eql"
language = "eql"
risk_score = 21
severity = "low"
query = '''
sequence by process.entity_id with maxspan=30s
  [process where event.type == "change" and event.action == "session_id_change"]
  [process where event.type == "change" and event.action == "uid_change" and user.id != "0" and
   user.Ext.real.id == "65534"]
'''
"""


def test_a_rule_sequence_over_change_documents_fires(tmp_path: Path) -> None:
    rule = tmp_path / "dropped.toml"
    rule.write_text(RULE)
    with SensorProcess("--rules", str(rule), "--no-builtin-rules") as sensor:
        child = subprocess.Popen([sys.executable, "-c", DROP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        pid = int(child.stdout.readline())
        child.communicate("", timeout=30)
        alerts = sensor.wait_for(lambda d: get(d, "event.kind") == "alert", timeout=15)
    assert get(alerts[0], "rule.name") == "Daemon dropped to nobody"
    assert get(alerts[0], "process.pid") == pid


def test_a_loop_of_set_id_calls_that_change_nothing_cannot_fill_the_ring() -> None:
    """An attacker's loop of setuid(getuid()) sends nothing after the first call: execs keep their documents and
    nothing is lost."""
    loop = "import os\nfor _ in range(300000):\n    os.setuid(0); os.setgid(0)\nprint(os.getpid(), flush=True)"
    with SensorProcess() as sensor:
        done = subprocess.run([sys.executable, "-c", loop], capture_output=True, text=True, check=True, timeout=120)
        pid = int(done.stdout)
        marker = subprocess.run(["/bin/true", "after-the-loop"], check=True)
        sensor.wait_for(lambda d: get(d, "process.args") == ["/bin/true", "after-the-loop"])
        assert marker.returncode == 0
        changes = _changes(sensor, pid)
    assert changes == []  # root setting root: no change
    assert " 0 lost" in sensor.stderr()
