"""Kibana's Session View over real documents with fork documents on (events.fork): every process forked while the
sensor runs has its fork document before its exec, the leaders every document names are processes with documents
of their own, and a re-exec says what ran before."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel

# a session: bash forks a subshell that never execs, a child that execs, and execs itself again at the end
SCRIPT = "( sleep 0.2 ) ; ( sleep 0.1 ; : forked-only ) & /bin/true session-child ; wait ; exec /bin/true session-end"


def test_forks_leaders_and_previous_images_make_a_complete_session() -> None:
    with SensorProcess(env={"CONTAINER_SENSOR_EVENTS_FORK": "true"}) as sensor:
        shell = subprocess.Popen(["setsid", "bash", "-c", SCRIPT])
        shell.wait(timeout=30)
        sensor.wait_for(lambda d: get(d, "process.args") == ["/bin/true", "session-end"], timeout=15)
        sensor.stop()
    docs = [d for d in sensor.docs if get(d, "event.kind") == "event"]
    by_entity: dict[str, list[dict]] = {}
    for doc in docs:
        by_entity.setdefault(get(doc, "process.entity_id"), []).append(doc)
    bash = next(d for d in docs if get(d, "event.action") == "exec" and get(d, "process.name") == "bash"
                and get(d, "process.args") == ["bash", "-c", SCRIPT])
    session = get(bash, "process.entity_id")
    in_session = [d for d in docs if get(d, "process.session_leader.entity_id") == session]
    assert len(in_session) >= 6
    forks = [d for d in in_session if get(d, "event.action") == "fork"]
    assert len(forks) >= 3  # the subshells and the child
    members = {get(d, "process.entity_id") for d in in_session}
    for doc in forks:
        assert get(doc, "event.type") == ["start"] and get(doc, "event.category") == ["process"]
        assert get(doc, "process.parent.entity_id") in members  # the leader, or a subshell of it
        assert get(doc, "process.name") == "bash"  # a copy of its parent's image until it execs
    # every process of the session forked while the sensor ran: its fork document comes before its exec
    for doc in in_session:
        if get(doc, "event.action") != "exec" or get(doc, "process.entity_id") == session:
            continue
        own = by_entity[get(doc, "process.entity_id")]
        actions = [get(d, "event.action") for d in own]
        assert "fork" in actions and actions.index("fork") < actions.index("exec"), actions
    # the leaders every document names are processes with documents of their own
    for doc in in_session:
        for leader in ("entry_leader", "session_leader", "group_leader"):
            entity = get(doc, f"process.{leader}.entity_id")
            if entity is not None:
                assert entity in by_entity, (leader, get(doc, f"process.{leader}"))
    # a fork-only subshell has its fork and end documents and nothing else
    assert any([get(d, "event.action") for d in by_entity[get(f, "process.entity_id")]] == ["fork", "end"]
               for f in forks)
    # the final exec of the session leader carries what it ran before
    end = next(d for d in docs if get(d, "process.args") == ["/bin/true", "session-end"]
               and get(d, "event.action") == "exec")
    assert get(end, "process.entity_id") == session
    assert get(end, "process.previous")[0] == {"executable": get(bash, "process.executable"),
                                               "args": ["bash", "-c", SCRIPT], "args_count": 3}
