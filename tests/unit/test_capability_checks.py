"""`container-sensor check` names each missing capability of the least-privilege set, one line each, with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.ops import preflight
from sensor.ops.preflight import check_capabilities, check_privileges, report
from sensor.probe import capabilities
from sensor.probe.capabilities import CAPABILITIES, effective_caps

ALL = sum(1 << cap.bit for cap in CAPABILITIES)


def mask(*names: str) -> int:
    return sum(1 << cap.bit for cap in CAPABILITIES if cap.name in names)


def test_the_set_is_the_proven_one() -> None:
    assert [cap.name for cap in CAPABILITIES] == ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
                                                  "CAP_SYS_NICE"]
    assert [cap.name for cap in CAPABILITIES if not cap.required] == ["CAP_SYS_NICE"]
    # linux/capability.h
    assert {cap.name: cap.bit for cap in CAPABILITIES} == {"CAP_BPF": 39, "CAP_PERFMON": 38, "CAP_SYS_PTRACE": 19,
                                                          "CAP_DAC_READ_SEARCH": 2, "CAP_SYS_NICE": 23}


def test_all_present_is_one_ok_line_and_needs_no_sys_admin() -> None:
    (check,) = check_capabilities(ALL)
    assert check.ok and "CAP_BPF CAP_PERFMON CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_SYS_NICE" in check.detail
    assert check_privileges(ALL).ok
    assert not ALL & (1 << capabilities.CAP_SYS_ADMIN)


@pytest.mark.parametrize("cap", CAPABILITIES, ids=lambda cap: cap.name)
def test_each_missing_capability_is_one_line_with_its_fix(cap: capabilities.Capability) -> None:
    checks = check_capabilities(ALL & ~(1 << cap.bit))
    assert [c.name for c in checks] == [cap.name]
    (check,) = checks
    assert not check.ok and check.fatal is cap.required
    text, can_run = report(checks)
    line = text.splitlines()[0]
    assert line.startswith(("FAIL " if cap.required else "warn ") + cap.name + ": missing, needed for ")
    assert f"capabilities.add [{cap.name.removeprefix('CAP_')}]" in line and "AmbientCapabilities" in line
    assert len(text.splitlines()) == 2  # the line, and the verdict
    assert can_run is not cap.required
    assert check_privileges(ALL & ~(1 << cap.bit)).ok is not cap.required


def test_several_missing_say_each_and_the_probe_message_names_them() -> None:
    checks = check_capabilities(mask("CAP_BPF", "CAP_SYS_NICE"))
    assert [c.name for c in checks] == ["CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"]
    privileges = check_privileges(mask("CAP_BPF", "CAP_SYS_NICE"))
    assert not privileges.ok
    assert privileges.detail.startswith("missing CAP_PERFMON (loading tracing programs")
    assert "CAP_SYS_PTRACE (" in privileges.detail and "CAP_DAC_READ_SEARCH (" in privileges.detail
    assert "CAP_SYS_NICE" not in privileges.detail


def test_effective_caps_reads_capeff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000880004\n")
    assert effective_caps(status) == mask(*(cap.name for cap in CAPABILITIES))


def test_tracefs_unmounted_without_sys_admin_fails_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "tracefs_mounted", lambda: None)
    monkeypatch.setattr(capabilities, "effective_caps", lambda: ALL)
    check = preflight.check_tracefs()
    assert not check.ok and check.fatal and "needs CAP_SYS_ADMIN" in check.detail
    assert "mount -t tracefs nodev /sys/kernel/tracing" in check.fix
    monkeypatch.setattr(capabilities, "effective_caps", lambda: ALL | 1 << capabilities.CAP_SYS_ADMIN)
    check = preflight.check_tracefs()
    assert check.ok and not check.fatal and "mounts it" in check.detail
