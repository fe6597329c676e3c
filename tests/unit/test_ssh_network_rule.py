"""The built-in network rule over connection documents: port 22, connections of processes recognised as ssh
whatever the port, and a second container reaching a recognised server's port; never the host's."""

from __future__ import annotations

from sensor.rules.builtin_ssh_network import (
    REASON_ENDPOINT,
    REASON_PORT,
    REASON_PROCESS,
    BuiltinSshNetworkRule,
)
from sensor.rules.detector import Detector

CID = "6d451776baac9a35973104c91c86d763ef1508d4981c1c430d0686db9fa6c919"


def connection(action: str, local: tuple[str, int], peer: tuple[str, int], entity: str = "e-1",
               container: bool = True) -> dict:
    doc: dict = {
        "@timestamp": "2026-12-03T10:00:00.000000Z",
        "event": {"kind": "event", "category": ["network"], "type": ["start", "connection"], "action": action,
                  "id": f"{action}-{local}-{peer}", "sequence": 1},
        "process": {"pid": 10, "entity_id": entity, "executable": "/tmp/web", "name": "web",
                    "parent": {"pid": 1, "entity_id": "p-1"}},
        "source": {"ip": local[0], "port": local[1]}, "destination": {"ip": peer[0], "port": peer[1]},
        "container_sensor": {"namespaces": {"mnt": 4026532178}},
    }
    if container:
        doc["container"] = {"id": CID, "runtime": "podman"}
    return doc


def test_port_22_either_way_in_a_container_only() -> None:
    rule = BuiltinSshNetworkRule()
    hit = rule.match(connection("connection_attempted", ("10.88.0.5", 40000), ("10.0.0.9", 22)))
    assert hit is not None and (hit.reason, hit.port) == (REASON_PORT, 22)
    hit = rule.match(connection("connection_accepted", ("10.88.0.5", 22), ("10.0.0.9", 50000)))
    assert hit is not None and (hit.reason, hit.port) == (REASON_PORT, 22)
    assert rule.match(connection("connection_attempted", ("10.88.0.5", 40000), ("10.0.0.9", 443))) is None
    # the host's ssh: not this rule's business
    assert rule.match(connection("connection_attempted", ("10.0.0.2", 40000), ("10.0.0.9", 22),
                                 container=False)) is None
    # a peer that connected *from* port 22 to a container's service is no ssh server in the container
    assert rule.match(connection("connection_accepted", ("10.88.0.5", 8080), ("10.0.0.9", 22))) is None


def test_a_recognised_server_on_another_port_and_a_second_container_reaching_it() -> None:
    rule = BuiltinSshNetworkRule()
    rule.remember("sshd-entity", "sshd", "server")
    hit = rule.match(connection("connection_accepted", ("10.88.0.5", 8022), ("10.88.0.7", 51000),
                                entity="sshd-entity"))
    assert hit is not None and (hit.reason, hit.port, hit.program) == (REASON_PROCESS, 8022, "sshd")
    other = rule.match(connection("connection_attempted", ("10.88.0.7", 51001), ("10.88.0.5", 8022),
                                  entity="nc-entity"))
    assert other is not None and (other.reason, other.port, other.program) == (REASON_ENDPOINT, 8022, "sshd")
    rule.remember("client-entity", "ssh", "client")
    client = rule.match(connection("connection_attempted", ("10.88.0.7", 51002), ("192.0.2.1", 2200),
                                   entity="client-entity"))
    assert client is not None and (client.reason, client.program) == (REASON_PROCESS, "ssh")


def test_bounded() -> None:
    rule = BuiltinSshNetworkRule(kept_processes=2, kept_endpoints=1)
    for n in range(5):
        rule.remember(f"e-{n}", "ssh", "client")
    assert rule.sizes["ssh_network_processes"] == 2
    assert rule.match(connection("connection_attempted", ("10.88.0.5", 1), ("192.0.2.1", 2200), entity="e-0")) \
        is None


def test_the_detector_raises_it_with_the_connection_and_folds_repeats_per_peer() -> None:
    detector = Detector([], fold_window_s=60.0)
    first = detector.evaluate(connection("connection_attempted", ("10.88.0.5", 40000), ("10.0.0.9", 22)))
    assert len(first) == 1
    alert = first[0]
    assert alert["rule"]["name"] == "SSH Connection To or From a Container"
    assert alert["destination"] == {"ip": "10.0.0.9", "port": 22} and alert["container"]["id"] == CID
    assert alert["container_sensor"]["alert"]["reason"] == REASON_PORT
    assert detector.evaluate(connection("connection_attempted", ("10.88.0.5", 40001), ("10.0.0.9", 22))) == []
    assert len(detector.evaluate(connection("connection_attempted", ("10.88.0.5", 40002), ("10.0.0.8", 22)))) == 1
    assert detector.stats()["builtin_network_matches"] == 3
