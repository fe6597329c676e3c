"""The detector: built-in ssh rule decisions, alert documents, folding with counts, and error containment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sensor import app
from sensor.config.settings import load_config
from sensor.model.records import RecordingWriter
from sensor.rules.detector import Detector
from sensor.rules.eql_compile import CompiledQuery
from sensor.rules.loader import LoadedRule, load_rule_file, load_rules
from tests.ecs_fields import ecs_problems
from tests.unit.rules_docs import container_ssh_exec, host_ssh_exec
from tests.unit.test_pipeline import HOST_NS, exec_rec

REPO = Path(__file__).resolve().parents[2]
SHARED_RULES = REPO.parent / "shared" / "rules"


class FakeClock:
    """Folding windows are measured on a monotonic clock; the tests move it by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def builtin_only(window: float = 60.0) -> tuple[Detector, FakeClock]:
    clock = FakeClock()
    return Detector([], fold_window_s=window, clock=clock), clock


def test_container_ssh_raises_one_ecs_alert_with_rule_threat_and_evidence() -> None:
    detector, _ = builtin_only()
    event = container_ssh_exec()
    alerts = detector.evaluate(event)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["event"]["kind"] == "alert" and event["event"]["kind"] == "event"   # event left untouched
    assert alert["event"]["id"] != event["event"]["id"]
    assert alert["event"]["severity"] == 47 and alert["event"]["risk_score"] == 47
    assert set(alert["rule"]) >= {"id", "uuid", "name", "description", "reference", "ruleset", "version"}
    threat = alert["threat"]
    assert threat["framework"] == "MITRE ATT&CK"
    assert threat["tactic"] == {"id": ["TA0008", "TA0003"], "name": ["Lateral Movement", "Persistence"],
                                "reference": ["https://attack.mitre.org/tactics/TA0008/",
                                              "https://attack.mitre.org/tactics/TA0003/"]}
    assert threat["technique"]["id"] == ["T1021", "T1133"]
    assert threat["technique"]["name"] == ["Remote Services", "External Remote Services"]
    assert threat["technique"]["subtechnique"] == {
        "id": ["T1021.004"], "name": ["SSH"], "reference": ["https://attack.mitre.org/techniques/T1021/004/"]}
    mapping = {t["tactic"]["id"]: t for t in alert["container_sensor"]["alert"]["threat_mapping"]}
    assert mapping["TA0008"]["technique"][0]["subtechnique"][0]["id"] == "T1021.004"
    assert mapping["TA0003"]["technique"][0]["id"] == "T1133"
    assert ecs_problems(alert) == []
    for key in ("process", "container", "host"):
        assert alert[key] == event[key]
    assert alert["container_sensor"]["cgroup"] == event["container_sensor"]["cgroup"]
    assert alert["container_sensor"]["namespaces"] == event["container_sensor"]["namespaces"]
    details = alert["container_sensor"]["alert"]
    assert details["recognized_by"] == "name" and details["program"] == "ssh"
    assert details["container_evidence"] == ["container.id", "process.entry_leader.entry_meta.type"]
    assert details["original_event"]["id"] == event["event"]["id"]
    assert details["fold"]["count"] == 1


def test_host_ssh_and_end_events_raise_nothing() -> None:
    detector, _ = builtin_only()
    assert detector.evaluate(host_ssh_exec()) == []
    end = container_ssh_exec()
    end["event"].update(type=["end"], action="end")
    assert detector.evaluate(end) == []
    assert detector.stats()["alerts"] == 0


def test_sshd_session_in_container_alerts_on_container_id() -> None:
    detector, _ = builtin_only()
    doc = container_ssh_exec()
    doc["process"]["entry_leader"]["entry_meta"]["type"] = "sshd"
    alerts = detector.evaluate(doc)
    assert len(alerts) == 1
    assert alerts[0]["container_sensor"]["alert"]["container_evidence"] == ["container.id"]
    no_id = container_ssh_exec()
    del no_id["container"]
    assert len(detector.evaluate(no_id)) == 1     # entry leader type container alone is evidence too


def test_renamed_ssh_in_container_recognised_by_content() -> None:
    if not os.path.exists("/usr/bin/ssh"):
        pytest.skip("apt-get install -y openssh-client")
    folder = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        renamed = folder / "backup-agent"
        shutil.copy2("/usr/bin/ssh", renamed)
        st = renamed.stat()
        doc = container_ssh_exec(name="backup-agent", executable=str(renamed), pid=os.getpid())
        doc["container_sensor"]["executable"] = {"inode": st.st_ino, "device": st.st_dev}
        detector, _ = builtin_only()
        alerts = detector.evaluate(doc)
        assert [a["container_sensor"]["alert"]["recognized_by"] for a in alerts] == ["content"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_repeats_are_folded_and_summarised_with_a_count() -> None:
    detector, clock = builtin_only(window=60.0)
    assert len(detector.evaluate(container_ssh_exec())) == 1
    for step in range(4):
        clock.now += 5
        assert detector.evaluate(container_ssh_exec(pid=30000 + step)) == []
    other_parent = container_ssh_exec()
    other_parent["process"]["parent"]["entity_id"] = "another-shell"
    assert len(detector.evaluate(other_parent)) == 1          # a different parent is a different alert
    assert detector.tick(clock.now) == []                     # window still open
    clock.now += 60
    summaries = detector.tick(clock.now)
    assert len(summaries) == 1
    fold = summaries[0]["container_sensor"]["alert"]["fold"]
    assert (fold["count"], fold["folded"]) == (5, 4)
    assert summaries[0]["event"]["kind"] == "alert"
    stats = detector.stats()
    assert (stats["alerts"], stats["folded"], stats["fold_summaries"]) == (3, 4, 1)
    assert len(detector.evaluate(container_ssh_exec())) == 1   # window closed: alerts at once again


def test_flush_releases_open_windows() -> None:
    detector, _ = builtin_only()
    detector.evaluate(container_ssh_exec())
    detector.evaluate(container_ssh_exec())
    assert [s["container_sensor"]["alert"]["fold"]["count"] for s in detector.flush()] == [2]


def test_a_failing_rule_is_counted_and_the_others_still_run() -> None:
    if not SHARED_RULES.is_dir():
        pytest.skip("shared rules not present")
    good = load_rule_file(SHARED_RULES / "lateral_movement_ssh_process_launched_inside_container.toml")
    assert isinstance(good, LoadedRule)

    def explode(doc: dict) -> bool:
        raise KeyError("boom")

    bad = replace(good, compiled=CompiledQuery(predicate=explode),
                  metadata=replace(good.metadata, name="exploding", rule_id="x"))
    detector = Detector([bad, good], clock=FakeClock())
    alerts = detector.evaluate(container_ssh_exec())
    assert sorted(a["rule"]["name"] for a in alerts) == sorted(
        ["SSH Client or Server Started Inside a Container", good.name])
    assert detector.stats()["rule_errors"] == 1 and detector.rule_errors == {"exploding": 1}


def test_garbage_documents_never_raise() -> None:
    detector, _ = builtin_only()
    for doc in ({}, {"event": "x"}, {"process": []}, {"event": {"action": "exec", "type": "start"},
                                                     "container": {"id": "c"}, "process": {"name": 3}}):
        assert detector.evaluate(doc) == []  # type: ignore[arg-type]


@pytest.mark.skipif(not SHARED_RULES.is_dir(), reason="shared rules not present")
def test_elastic_rule_alert_carries_the_rule_metadata() -> None:
    loaded, _ = load_rules(SHARED_RULES)
    detector = Detector(loaded, builtin_ssh=False, clock=FakeClock())
    alerts = detector.evaluate(container_ssh_exec())
    by_id = {a["rule"]["id"]: a for a in alerts}
    elastic = by_id["5c50ffa6-07f4-4cce-a1b7-c16928a2ed52"]
    assert elastic["rule"]["name"] == "Deprecated - SSH Process Launched From Inside A Container via Elastic Defend"
    assert elastic["event"]["risk_score"] == 47 and elastic["event"]["severity"] == 47
    assert elastic["threat"]["tactic"]["id"] == ["TA0008", "TA0003"]
    assert ecs_problems(elastic) == []
    assert elastic["container_sensor"]["alert"]["rule_file"].endswith(".toml")
    assert detector.evaluate(host_ssh_exec()) == []


def _rule(query: str, name: str = "r") -> LoadedRule:
    from sensor.rules.eql_compile import compile_query
    from sensor.rules.eql_parse import parse_query
    from sensor.rules.metadata import RuleMetadata

    meta = RuleMetadata(rule_id=name, name=name, description="", severity="low", risk_score=21)
    return LoadedRule(Path(f"{name}.toml"), meta, query, compile_query(parse_query(query)))


@pytest.mark.parametrize(("query", "name", "expected"), [
    ('process where process.name in ("ssh", "scp") and process.pid > 0', "ssh", True),
    ('process where process.name in ("ssh", "scp") and process.pid > 0', "SSH", False),
    ('process where process.name : ("ssh", "scp") and process.pid > 0', "SSH", True),
    ('process where process.name in~ ("ssh") and process.pid > 0', "Ssh", True),
    ('process where process.pid > 0 and process.name == "ssh"', "sshd", False),
    ('process where process.name in ("ssh") and process.pid > 0', ["bash", "ssh"], True),
    ('process where process.name in ("ssh") and process.pid > 0', None, False),
    ('process where process.name like "ss*" and process.pid > 0', "sshd", True),
])
def test_skipping_rules_by_process_name_keeps_the_rule_meaning(query: str, name: object, expected: bool) -> None:
    rule = _rule(query)
    doc = host_ssh_exec()
    if name is None:
        del doc["process"]["name"]
    else:
        doc["process"]["name"] = name
    assert rule.compiled.predicate is not None and rule.compiled.predicate(doc) is expected
    detector = Detector([rule], builtin_ssh=False, fold_window_s=0, clock=FakeClock())
    assert bool(detector.evaluate(doc)) is expected


def test_a_late_repeat_closes_the_old_window_itself_when_tick_was_not_called() -> None:
    detector, clock = builtin_only(window=10.0)
    detector.evaluate(container_ssh_exec())
    detector.evaluate(container_ssh_exec())
    clock.now += 11
    out = detector.evaluate(container_ssh_exec())
    assert [a["container_sensor"]["alert"]["fold"]["count"] for a in out] == [2, 1]   # summary, then the new one


def test_fold_windows_are_bounded_and_closing_early_is_counted() -> None:
    from sensor.rules.folding import AlertFolder

    folder = AlertFolder(window_s=60.0, max_windows=2)

    def make(n: int) -> dict:
        return {"event": {"id": f"a{n}"}, "@timestamp": "t", "container_sensor": {"alert": {}}}

    assert len(folder.offer(("k", 1), 0.0, lambda: make(1))) == 1
    assert folder.offer(("k", 1), 1.0, lambda: make(2)) == []          # folded into window 1
    assert len(folder.offer(("k", 2), 2.0, lambda: make(3))) == 1
    out = folder.offer(("k", 3), 3.0, lambda: make(4))                # evicts window 1: its summary goes out
    assert [a["container_sensor"]["alert"]["fold"].get("folded") for a in out] == [1, None]
    assert folder.windows_closed_early == 1 and folder.folded == 1 and folder.summaries == 1


def test_a_container_storm_of_one_file_is_decided_once_and_relearned_when_it_changes(tmp_path: Path) -> None:
    """Execs of a file found not to be ssh skip the identity lookup afterwards; a new change time (the file
    rewritten into ssh) or ssh recognised under a name brings the lookup back."""
    if not os.path.exists("/usr/bin/ssh"):
        pytest.skip("apt-get install -y openssh-client")
    tool = tmp_path / "tool"
    shutil.copy2(shutil.which("true") or "/bin/true", tool)
    detector = Detector([], clock=FakeClock())
    identity = detector._builtin.identity  # private: the lookups are what is counted

    def exec_of_tool(name: str = "tool") -> list:
        st = tool.stat()
        doc = container_ssh_exec(name=name, executable=str(tool), pid=os.getpid())
        doc["container_sensor"]["executable"] = {"inode": st.st_ino, "device": st.st_dev,
                                                 "ctime_ns": st.st_ctime_ns}
        return detector.evaluate(doc)

    for _ in range(50):
        assert exec_of_tool() == []
    assert identity.counts["identity_lookups"] == 1 and identity.counts["identity_cache_hits"] == 0
    time.sleep(0.01)
    shutil.copy2("/usr/bin/ssh", tool)  # same inode, new content and change time
    alerts = exec_of_tool()
    assert [a["container_sensor"]["alert"]["recognized_by"] for a in alerts] == ["content"]
    assert identity.counts["identity_lookups"] == 2


def test_a_hard_link_deleted_before_evaluation_is_known_by_the_containers_ssh_inode(tmp_path: Path) -> None:
    """On a container's first exec its usual ssh paths are recorded, so a link whose path is already gone is
    still recognised by (device, inode). A fake /proc holding a real container root."""
    if not os.path.exists("/usr/bin/ssh"):
        pytest.skip("apt-get install -y openssh-client")
    root = tmp_path / "proc" / "200" / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/ssh", root / "usr/bin/ssh")
    st = (root / "usr/bin/ssh").stat()
    doc = container_ssh_exec(name="gone", executable="/tmp/gone", pid=200)
    doc["container_sensor"]["executable"] = {"inode": st.st_ino, "device": st.st_dev}
    detector = Detector([], proc_root=str(tmp_path / "proc"), clock=FakeClock())
    alerts = detector.evaluate(doc)
    assert [a["container_sensor"]["alert"]["recognized_by"] for a in alerts] == ["inode"]


@pytest.mark.skipif(not SHARED_RULES.is_dir(), reason="shared rules not present")
def test_sequence_rule_alert_names_every_event_of_the_sequence() -> None:
    rule = load_rule_file(SHARED_RULES / "persistence_suspicious_ssh_execution_xzbackdoor.toml")
    assert isinstance(rule, LoadedRule)
    detector = Detector([rule], builtin_ssh=False, clock=FakeClock())
    first = host_ssh_exec()
    first["event"].update(type=["end"], action="end", id="end-1")
    first["process"].update(name="sshd", entity_id="S1", exit_code=255, command_line="/usr/sbin/sshd -D -R",
                            parent={"command_line": "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"})
    second = host_ssh_exec()
    second["@timestamp"] = "2026-11-27T21:14:40.000000Z"
    second["event"]["id"] = "exec-2"
    second["process"].update(name="sh", args=["sh", "-c", "id"], command_line="sh -c id",
                             parent={"name": "sshd", "entity_id": "S1", "command_line": "/usr/sbin/sshd -D -R"})
    assert detector.evaluate(first) == []
    alerts = detector.evaluate(second)
    assert len(alerts) == 1
    sequence = alerts[0]["container_sensor"]["alert"]["sequence"]
    assert [e["id"] for e in sequence["events"]] == ["end-1", "exec-2"]
    assert sequence["by"] == ["3d1219c7c4c5404aaa1f6d2a48adfda4", "S1"]
    assert alerts[0]["rule"]["id"] == "7afc6cc9-8800-4c7f-be6b-b688d2dea248"
    assert detector.stats()["sequence_partials"] == 0


def test_a_missing_rule_engine_dependency_stops_the_sensor_with_one_line(tmp_path: Path) -> None:
    """Detection never switches itself off: with the RE2 binding missing (import blocked), `replay` writes no
    document, one line naming the missing module, and exits 1, as `run` does before attaching the probe."""
    recording = tmp_path / "one.rec"
    with open(recording, "wb") as stream:
        RecordingWriter(stream, {"boot_id": "b", "boot_wall_offset_ns": 0}).write(
            exec_rec(500, 1, (b"/bin/true",), HOST_NS, 1, 10_000))
    blocked = "import sys; sys.modules['re2'] = None; from sensor.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", blocked, "replay", "--metrics-address", "off", str(recording)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "container-sensor: detection cannot start: import of re2 halted; None in sys.modules (a dependency is"
        " missing: run scripts/install.sh again, or pip install the sensor with its dependencies)"]


def test_build_detector_raises_when_the_rule_engine_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sensor.rules.detector", None)
    with pytest.raises(app.DetectionUnavailable, match="detection cannot start"):
        app.build_detector(load_config(None, {}, {}))
