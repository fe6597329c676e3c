"""The sensor as root with exactly its least-privilege capability set, on the real kernel, with real containers.

The set (sensor.probe.capabilities.CAPABILITIES) is what the least-privilege DaemonSet and the systemd unit grant:
CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_SYS_NICE, nothing else (no CAP_SYS_ADMIN, and
no CAP_SYS_RESOURCE, which root lacks here anyway), with no_new_privs as `allowPrivilegeEscalation: false` sets.
Each test takes one capability away and shows what breaks: with the sensor's own privilege check skipped, so
that the kernel is what refuses, and with it, so that the sensor says which capability is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from sensor.probe.capabilities import CAPABILITIES
from tests.integration import sensor_process
from tests.integration.rootfs import RootfsUnavailable, copy_rootfs
from tests.integration.sensor_process import REPO, SensorProcess, get, invoked, invoked_name
from tests.integration.test_detection import BUILTIN, alerts_for, in_container

pytestmark = [pytest.mark.kernel, pytest.mark.containers]

LEAST = tuple(cap.name.removeprefix("CAP_") for cap in CAPABILITIES)
# The sensor with its own privilege check skipped, so that the kernel decides (the test's eyes only).
KERNEL_DECIDES = ("import sensor.probe.loader, sensor.cli;"
                  " sensor.probe.loader.privileges_problem = lambda: None;"
                  " sensor.cli.main()")
# ssh by name; a copy under another name (recognised by content through /proc/PID/exe or /proc/PID/root);
# an execute-only copy, which only a reader that bypasses file modes can recognise.
SCRIPT = ("ssh -V; cp /usr/bin/ssh /tmp/kworker; /tmp/kworker -V;"
          " cp /usr/bin/ssh /tmp/xonly; chmod 0111 /tmp/xonly; /tmp/xonly -V; sleep 2")


RUN = (sys.executable, "-m", "sensor", "run", "--metrics-address", "off", "--log-format", "text")


def setpriv(caps: tuple[str, ...]) -> list[str]:
    spec = ",".join(["-all", *(f"+{cap.lower()}" for cap in caps)])
    return ["setpriv", f"--inh-caps={spec}", f"--ambient-caps={spec}", f"--bounding-set={spec}", "--no-new-privs",
            "--"]


def cap_mask(caps: tuple[str, ...]) -> int:
    bits = {cap.name.removeprefix("CAP_"): cap.bit for cap in CAPABILITIES}
    return sum(1 << bits[cap] for cap in caps)


@contextlib.contextmanager
def sensor_with(caps: tuple[str, ...], *, kernel_decides: bool = False) -> Iterator[SensorProcess]:
    entry = ["-c", KERNEL_DECIDES] if kernel_decides else ["-m", "sensor"]
    command = [*setpriv(caps), sys.executable, *entry]
    with mock.patch.object(sensor_process, "sensor_command", lambda: command), SensorProcess() as running:
        yield running


def without(cap: str) -> tuple[str, ...]:
    return tuple(c for c in LEAST if c != cap)


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    for tool in ("setpriv", "podman", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: scripts/install.sh --test")
    if not Path("/sys/kernel/tracing/events").is_dir():
        # The set has no CAP_SYS_ADMIN: like a least-privilege node, the host mounts tracefs.
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="least-privilege-root-"))
    try:
        try:
            yield copy_rootfs(folder / "root")
        except RootfsUnavailable as exc:
            pytest.skip(str(exc))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def container_done(sensor: SensorProcess, container_id: str) -> None:
    """Waits for the end of the container's shell (after everything it ran), and a little for late alerts."""
    sensor.wait_for(lambda d: get(d, "event.action") == "end" and get(d, "container.id") == container_id
                    and invoked_name(d) == "sh", timeout=20)
    time.sleep(2)


def recognised(sensor: SensorProcess, container_id: str) -> dict[str, str]:
    return {invoked(a): get(a, "container_sensor.alert.recognized_by")
            for a in sensor.alerts() if get(a, "container.id") == container_id and get(a, "rule.name") == BUILTIN}


def test_exactly_the_set_starts_attaches_emits_and_detects(root: Path) -> None:
    with sensor_with(LEAST) as sensor:
        status = Path(f"/proc/{sensor.proc.pid}/status").read_text()
        effective = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:"))
        assert effective == cap_mask(LEAST), f"{effective:x}"
        assert "NoNewPrivs:\t1" in status
        container_id = in_container(root, SCRIPT)
        expected = {"/usr/bin/ssh": "name", "/tmp/kworker": "content", "/tmp/xonly": "content"}
        for executable, way in expected.items():
            alert = alerts_for(sensor, container_id, BUILTIN, executable)[0]
            assert get(alert, "container_sensor.alert.recognized_by") == way, executable
            assert get(alert, "container.runtime") == "podman"
        # Named from podman's state under /var/lib/containers (the first execs may come before podman wrote it).
        exec_docs = sensor.wait_for(lambda d: get(d, "event.action") == "exec"
                                    and get(d, "container.id") == container_id, count=5)
        assert any(get(d, "container.name") for d in exec_docs)
        assert "not applied" not in sensor.stderr()  # priority_boost took (CAP_SYS_NICE)
    check = subprocess.run([*setpriv(LEAST), sys.executable, "-m", "sensor", "check"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert check.stdout.splitlines()[0].startswith("ok   capabilities:"), check.stdout


@pytest.mark.parametrize("cap,kernel_says", [("BPF", "could not open bpf map"),
                                             ("PERFMON", "Failed to load program: Operation not permitted")])
def test_without_bpf_or_perfmon_the_program_does_not_load(cap: str, kernel_says: str) -> None:
    with pytest.raises(RuntimeError, match="sensor exited with 1") as refused, sensor_with(without(cap),
                                                                                          kernel_decides=True):
        pass
    assert kernel_says in str(refused.value)
    # The sensor's own check says it first, in one line naming the capability.
    result = subprocess.run([*setpriv(without(cap)), *RUN], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"CAP_{cap} (" in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_without_sys_ptrace_copies_of_ssh_are_known_only_by_the_head_the_kernel_read(root: Path) -> None:
    with sensor_with(without("SYS_PTRACE"), kernel_decides=True) as sensor:
        container_id = in_container(root, SCRIPT)
        alerts_for(sensor, container_id, BUILTIN, "/usr/bin/ssh")
        container_done(sensor, container_id)
        # /proc/PID/exe and /proc/PID/root of a process that is not the sensor's own are refused (EACCES): no
        # byte of the copies can be read, but they are copies of a build the sensor knows (the host's ssh)
        assert recognised(sensor, container_id) == {"/usr/bin/ssh": "name", "/tmp/kworker": "fingerprint",
                                                    "/tmp/xonly": "fingerprint"}


def test_without_dac_read_search_an_execute_only_copy_is_known_only_by_its_head(root: Path) -> None:
    with sensor_with(without("DAC_READ_SEARCH"), kernel_decides=True) as sensor:
        container_id = in_container(root, SCRIPT)
        alerts_for(sensor, container_id, BUILTIN, "/tmp/kworker")
        container_done(sensor, container_id)
        # the execute-only copy cannot be read: its head, read by the kernel at exec, names the host's build
        assert recognised(sensor, container_id) == {"/usr/bin/ssh": "name", "/tmp/kworker": "content",
                                                    "/tmp/xonly": "fingerprint"}


def test_without_sys_nice_the_priority_boost_is_not_applied() -> None:
    with sensor_with(without("SYS_NICE")) as sensor:
        time.sleep(0.5)
        assert "priority_boost 4 not applied (Permission denied)" in sensor.stderr()


@pytest.mark.parametrize("cap", ["SYS_PTRACE", "DAC_READ_SEARCH"])
def test_the_sensor_refuses_to_run_blind_and_names_the_capability(cap: str) -> None:
    result = subprocess.run([*setpriv(without(cap)), *RUN], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"missing CAP_{cap} (" in result.stderr, result.stderr
    check = subprocess.run([*setpriv(without(cap)), sys.executable, "-m", "sensor", "check"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode != 0
    lines = [line for line in check.stdout.splitlines() if line.startswith(f"FAIL CAP_{cap}:")]
    assert len(lines) == 1 and f"capabilities.add [{cap}]" in lines[0], check.stdout


def unmounted_tracefs(*argv: str) -> list[str]:
    """ARGV in a private mount namespace where tracefs is not mounted, as on a host that boots without it."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; exec \"$@\"", "sh",
            *argv]


def test_sys_admin_is_needed_only_to_mount_tracefs(tmp_path: Path) -> None:
    run = list(RUN)
    refused = subprocess.run(unmounted_tracefs(*setpriv(LEAST), *run), cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1
    assert "tracefs is not mounted and mounting it at /sys/kernel/tracing failed (Operation not permitted)" \
        in refused.stderr, refused.stderr
    check = subprocess.run(unmounted_tracefs(*setpriv(LEAST), sys.executable, "-m", "sensor", "check"), cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert "FAIL tracefs: not mounted, and mounting it needs CAP_SYS_ADMIN" in check.stdout, check.stdout
    # The same set plus CAP_SYS_ADMIN mounts it (in that namespace only) and attaches.
    ready = tmp_path / "ready"
    sensor = subprocess.Popen(unmounted_tracefs(*setpriv((*LEAST, "SYS_ADMIN")), *run, "--ready-file", str(ready)),
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and sensor.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), sensor.stderr.read() if sensor.poll() is not None else "not ready in 60 s"
    finally:
        sensor.terminate()
        sensor.wait(30)
