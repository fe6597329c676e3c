"""Credential and session change records: decoded from the probe's layout, and turned into a change document only
when the ids or the session really changed."""

from __future__ import annotations

import pytest

from sensor.model.processes import Process, ProcessTable
from sensor.model.records import CredRecord
from sensor.probe import layout as probe_layout
from sensor.probe.layout import DecodeError, decode


def _raw(change: int, uid: int = 65534) -> bytes:
    return probe_layout.CRED.pack(probe_layout.RECORD_CRED, probe_layout.CRED.size, 7, 42, change, uid, 0, uid, 0,
                                  42, 0, 555)


def test_a_cred_record_decodes_with_defends_action_name() -> None:
    record = decode(_raw(probe_layout.CRED_UID))
    assert record == CredRecord(7, 42, "uid_change", 65534, 0, 65534, 0, 42, 555)
    assert decode(_raw(probe_layout.CRED_SID)).change == "session_id_change"
    with pytest.raises(DecodeError):
        decode(_raw(9))
    with pytest.raises(DecodeError):
        decode(_raw(probe_layout.CRED_GID)[:-1])


def _table_with_root_process() -> ProcessTable:
    table = ProcessTable("0" * 32)
    table._procs[42] = Process(pid=42, ppid=1, start_boottime_ns=555, entity_id="e", uid=0, gid=0, euid=0, egid=0,
                               sid=1)  # private: a process as the table holds it
    return table


def test_only_a_real_change_replaces_the_entry() -> None:
    table = _table_with_root_process()
    before = table.get(42)
    assert table.on_cred(CredRecord(7, 42, "uid_change", 0, 0, 0, 0, 1, 555)) is None  # setuid(0) as root
    assert table.on_cred(CredRecord(7, 42, "uid_change", 65534, 0, 65534, 0, 1, 999)) is None  # another process
    changed = table.on_cred(CredRecord(7, 42, "uid_change", 65534, 0, 65534, 0, 1, 555))
    assert changed is not None and changed is not before and table.get(42) is changed
    assert (changed.uid, changed.euid, changed.gid) == (65534, 65534, 0)
    assert (before.uid, before.euid) == (0, 0)  # documents already built from it stay true
    assert table.on_cred(CredRecord(8, 42, "session_id_change", 65534, 0, 65534, 0, 42, 555)).sid == 42
    assert table.on_cred(CredRecord(9, 43, "gid_change", 1, 1, 1, 1, 1, 555)) is None  # unknown pid
