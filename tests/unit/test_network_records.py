"""Network records: decoded from the probe's layout, and turned into connection_attempted/connection_accepted
documents as Elastic Defend writes them, routed to the network data stream, and attributed to their process."""

from __future__ import annotations

import socket

import pytest

from sensor.ecs.builder import DocumentBuilder
from sensor.model.processes import ProcessTable
from sensor.model.records import NetRecord, from_wire, to_wire
from sensor.model.sessions import find_leaders
from sensor.outputs.compact import compact_line
from sensor.outputs.elasticsearch_naming import StreamRouter
from sensor.outputs.memory import MemoryOutput
from sensor.pipeline import Pipeline
from sensor.probe import layout as probe_layout
from sensor.probe.layout import DecodeError, decode
from tests.unit.test_ecs import HOST
from tests.unit.test_pipeline import CONTAINER_NS, exec_rec


def _raw(action: int, family: int, local: bytes, remote: bytes, pid: int = 42) -> bytes:
    return probe_layout.NET.pack(probe_layout.RECORD_NET, probe_layout.NET.size, 7, pid, action, 555, family,
                                 40000, 22, 0, local.ljust(16, b"\0"), remote.ljust(16, b"\0"))


def test_ipv4_and_ipv6_records_decode_with_defends_action_names() -> None:
    v4 = decode(_raw(probe_layout.NET_ATTEMPTED, probe_layout.AF_INET, bytes([10, 0, 0, 2]), bytes([1, 2, 3, 4])))
    assert v4 == NetRecord(7, 42, "connection_attempted", 555, "10.0.0.2", 40000, "1.2.3.4", 22)
    v6 = decode(_raw(probe_layout.NET_ACCEPTED, probe_layout.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1"),
                     socket.inet_pton(socket.AF_INET6, "2001:db8::7")))
    assert (v6.action, v6.local_ip, v6.remote_ip) == ("connection_accepted", "::1", "2001:db8::7")


def test_an_ipv4_peer_of_a_dual_stack_socket_reads_as_ipv4() -> None:
    """A rule's cidrmatch(destination.ip, "127.0.0.0/8") must see 127.0.0.1, not ::ffff:127.0.0.1."""
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
    record = decode(_raw(probe_layout.NET_ACCEPTED, probe_layout.AF_INET6, mapped, mapped))
    assert (record.local_ip, record.remote_ip) == ("127.0.0.1", "127.0.0.1")


def test_damaged_network_records_are_refused() -> None:
    with pytest.raises(DecodeError):
        decode(_raw(9, probe_layout.AF_INET, b"", b""))
    with pytest.raises(DecodeError):
        decode(_raw(probe_layout.NET_ATTEMPTED, 1, b"", b""))  # AF_UNIX
    with pytest.raises(DecodeError):
        decode(_raw(probe_layout.NET_ATTEMPTED, probe_layout.AF_INET, b"", b"")[:-1])


def test_a_network_record_survives_a_recording() -> None:
    record = NetRecord(7, 42, "connection_accepted", 555, "::1", 22, "::1", 40000)
    assert from_wire(to_wire(record)) == record


def _pipeline() -> tuple[Pipeline, MemoryOutput]:
    out = MemoryOutput()
    pipeline = Pipeline(table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0),
                        outputs=[out], leaders=find_leaders)
    return pipeline, out


def test_a_connection_is_a_network_document_of_its_process() -> None:
    pipeline, out = _pipeline()
    pipeline.handle(exec_rec(500, 1, (b"/usr/bin/curl", b"https://example.com"), CONTAINER_NS, 1, 10_000))
    start = 10_000 - 1000
    pipeline.handle(NetRecord(20_000, 500, "connection_attempted", start, "10.0.0.2", 40000, "93.184.216.34", 443))
    pipeline.handle(NetRecord(30_000, 500, "connection_accepted", start, "10.0.0.2", 8080, "10.0.0.9", 51000))
    exec_doc, attempted, accepted = out.docs
    assert attempted["event"]["category"] == ["network"] and attempted["event"]["type"] == ["start"]
    assert attempted["event"]["action"] == "connection_attempted"
    assert attempted["event"]["dataset"] == attempted["data_stream"]["dataset"] == "endpoint.events.network"
    assert exec_doc["data_stream"]["dataset"] == "endpoint.events.process"  # the process stream is untouched
    assert attempted["destination"] == {"ip": "93.184.216.34", "port": 443, "address": "93.184.216.34"}
    assert attempted["source"] == {"ip": "10.0.0.2", "port": 40000, "address": "10.0.0.2"}
    assert attempted["network"] == {"transport": "tcp", "type": "ipv4", "direction": "egress"}
    # the peer is the destination of an accepted connection too, as Elastic's rules read it
    assert accepted["destination"]["ip"] == "10.0.0.9" and accepted["source"]["port"] == 8080
    assert accepted["network"]["direction"] == "ingress"
    for doc in (attempted, accepted):
        assert doc["process"]["entity_id"] == exec_doc["process"]["entity_id"]
        assert doc["process"]["name"] == "curl" and doc["user"]["id"] == "0"
        assert doc["container_sensor"]["namespaces"] == exec_doc["container_sensor"]["namespaces"]
    assert len({d["event"]["id"] for d in out.docs}) == 3
    assert (pipeline.stats.connections_attempted, pipeline.stats.connections_accepted) == (1, 1)
    assert pipeline.stats.connections_unattributed == 0
    # the Elasticsearch output sends each to its own data stream
    router = StreamRouter(None, None)
    assert router.route(attempted, False)[0] == "logs-endpoint.events.network-default"
    assert router.route(exec_doc, False)[0] == "logs-endpoint.events.process-default"


def test_a_connection_of_an_unknown_or_reused_pid_is_written_and_counted(caplog) -> None:
    pipeline, out = _pipeline()
    pipeline.handle(exec_rec(500, 1, (b"/bin/sh",), CONTAINER_NS, 1, 10_000))
    pipeline.handle(NetRecord(20_000, 500, "connection_attempted", 1, "10.0.0.2", 1, "10.0.0.3", 2))  # reused pid
    pipeline.handle(NetRecord(20_001, 0, "connection_attempted", 0, "10.0.0.2", 1, "10.0.0.3", 2))  # no owner
    _exec, reused, ownerless = out.docs
    assert reused["process"] == {"pid": 500} and "process" not in ownerless
    assert reused["destination"]["ip"] == "10.0.0.3"
    assert pipeline.stats.connections_unattributed == 2
    assert "without its process" in caplog.text


def test_the_compact_line_shows_both_ends() -> None:
    pipeline, out = _pipeline()
    pipeline.handle(exec_rec(500, 1, (b"/usr/bin/nc",), CONTAINER_NS, 1, 10_000))
    pipeline.handle(NetRecord(20_000, 500, "connection_attempted", 9_000, "10.0.0.2", 40000, "1.2.3.4", 4444))
    line = compact_line(out.docs[-1])
    assert "conn " in line and "10.0.0.2:40000 -> 1.2.3.4:4444 nc" in line and "pid=500" in line
