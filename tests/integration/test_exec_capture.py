"""The real probe in the real kernel: exact argv, pids, executables, exit codes, and ECS conformance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.ecs_fields import ecs_problems
from tests.integration.sensor_process import REPO, SensorProcess, get, run_and_wait

pytestmark = pytest.mark.kernel


def test_exact_argv_with_spaces_quotes_and_newlines(sensor: SensorProcess) -> None:
    argv = ["/bin/echo", "two words", "it's \"quoted\"", "line1\nline2", "", "tab\there"]
    child = run_and_wait(argv)
    doc = sensor.exec_of(child.pid)
    assert get(doc, "process.args") == argv
    assert get(doc, "process.args_count") == len(argv)
    assert get(doc, "process.command_line") == " ".join(argv)
    assert get(doc, "process.executable") == os.path.realpath("/bin/echo")  # the file itself, as Defend has it
    assert get(doc, "process.name") == "echo"
    assert get(doc, "process.parent.pid") == os.getpid()
    assert get(doc, "container_sensor.args_truncated") is False


def test_non_utf8_argv_becomes_valid_utf8_with_escapes(sensor: SensorProcess) -> None:
    child = run_and_wait([b"/bin/echo", b"caf\xe9", b"\xff\xfe", "ünï".encode()])
    doc = sensor.exec_of(child.pid)
    assert get(doc, "process.args") == ["/bin/echo", "caf\\xe9", "\\xff\\xfe", "ünï"]


def test_two_hundred_arguments(sensor: SensorProcess) -> None:
    argv = ["/bin/true", *(f"arg-{i:03d}" for i in range(200))]
    child = run_and_wait(argv)
    doc = sensor.exec_of(child.pid)
    assert get(doc, "process.args") == argv
    assert get(doc, "process.args_count") == 201
    assert get(doc, "container_sensor.args_truncated") is False


def test_huge_argument_is_cut_and_flagged_never_silently(sensor: SensorProcess) -> None:
    big = "x" * 100_000
    child = run_and_wait(["/bin/true", "first", big, "last"])
    doc = sensor.exec_of(child.pid)
    args = get(doc, "process.args")
    assert get(doc, "container_sensor.args_truncated") is True
    assert get(doc, "process.args_count") == 4, "the true count survives truncation"
    assert args[:2] == ["/bin/true", "first"]
    assert args[2] == big[: len(args[2])] and 4096 <= len(args[2]) < 100_000


def test_working_directory_is_taken_in_the_kernel(sensor: SensorProcess, tmp_path) -> None:
    deep = tmp_path / "with space" / "and\nnewline"
    deep.mkdir(parents=True)
    child = run_and_wait(["/bin/true"], cwd=deep)  # gone long before anyone could read /proc/PID/cwd
    assert get(sensor.exec_of(child.pid), "process.working_directory") == str(deep)
    child = run_and_wait(["/bin/true"], cwd="/proc/self")  # crosses a mount point
    assert get(sensor.exec_of(child.pid), "process.working_directory") == f"/proc/{child.pid}"


def test_relative_executable_is_made_absolute(sensor: SensorProcess, tmp_path) -> None:
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "tool"
    tool.symlink_to("/bin/true")
    child = run_and_wait(["./bin/tool", "x"], cwd=tmp_path)
    doc = sensor.exec_of(child.pid)
    # the file the link led to, as Elastic Defend writes it; the path as passed, made absolute, beside it
    assert get(doc, "process.executable") == os.path.realpath("/bin/true")
    assert get(doc, "process.name") == "true"
    assert get(doc, "container_sensor.executable.passed") == str(tool)
    assert get(doc, "process.args") == ["./bin/tool", "x"]


def test_exit_codes_and_signals(sensor: SensorProcess) -> None:
    seven = run_and_wait(["/bin/sh", "-c", "exit 7"])
    killed = run_and_wait(["/bin/sh", "-c", "kill -9 $$"])
    assert get(sensor.end_of(seven.pid), "process.exit_code") == 7
    end = sensor.end_of(killed.pid)
    assert get(end, "process.exit_code") == 137
    assert get(end, "container_sensor.exit_signal") == 9
    assert get(end, "event.type") == ["end"] and get(end, "event.action") == "end"


def test_process_that_exits_within_a_millisecond(sensor: SensorProcess) -> None:
    pids = [run_and_wait(["/bin/true"]).pid for _ in range(20)]
    for pid in pids:
        doc = sensor.exec_of(pid)
        assert get(doc, "process.executable") == os.path.realpath("/bin/true")
        assert get(doc, "process.parent.pid") == os.getpid()
        assert get(doc, "process.parent.executable") == os.path.realpath(sys.executable)
        assert get(sensor.end_of(pid), "process.exit_code") == 0


def test_script_exec_reports_interpreter_argv(sensor: SensorProcess, tmp_path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    child = run_and_wait([str(script), "a b"])
    doc = sensor.exec_of(child.pid)
    assert get(doc, "process.args") == ["/bin/sh", str(script), "a b"]
    # the image the kernel runs is the interpreter's, as Elastic Defend reports it; the script is the path passed
    assert get(doc, "process.executable") == os.path.realpath("/bin/sh")
    assert get(doc, "container_sensor.executable.passed") == str(script)


def test_fork_exec_chain_keeps_parent_and_entity_ids(sensor: SensorProcess) -> None:
    shell = subprocess.Popen(["/bin/sh", "-c", "/bin/true; echo done"], stdout=subprocess.PIPE)
    shell.communicate(timeout=10)
    shell_doc = sensor.exec_of(shell.pid)
    child_docs = sensor.wait_for(lambda d: get(d, "event.action") == "exec"
                                 and get(d, "process.parent.pid") == shell.pid)
    child = child_docs[-1]
    assert get(child, "process.executable") == os.path.realpath("/bin/true")
    assert get(child, "process.parent.entity_id") == get(shell_doc, "process.entity_id")
    assert get(child, "process.entity_id") != get(shell_doc, "process.entity_id")


def test_fork_only_processes_are_reported_ancestors_first(sensor: SensorProcess, tmp_path) -> None:
    """Fork records are deferred in the kernel until needed: nested subshells that never exec must still be
    the parents of what they run, and a subshell's own exit must still give an end document."""
    marker = f"nested-{tmp_path.name}"
    script = f"( ( /bin/echo {marker}; true ); true ); (exit 3); true"
    shell = run_and_wait(["/bin/bash", "-c", script])
    echo = sensor.wait_for(lambda d: get(d, "event.action") == "exec" and get(d, "process.args") == [
        "/bin/echo", marker])[-1]
    inner_pid = get(echo, "process.parent.pid")
    assert inner_pid != shell.pid
    assert get(echo, "process.parent.name") == "bash"
    inner_end = sensor.end_of(inner_pid)
    assert get(inner_end, "process.entity_id") == get(echo, "process.parent.entity_id")
    outer_pid = get(inner_end, "process.parent.pid")
    outer_end = sensor.end_of(outer_pid)
    assert get(outer_end, "process.parent.pid") == shell.pid
    assert get(outer_end, "process.args") == ["/bin/bash", "-c", script]
    three = sensor.wait_for(lambda d: get(d, "event.action") == "end" and get(d, "process.exit_code") == 3
                            and get(d, "process.parent.pid") == shell.pid)[-1]
    assert get(three, "process.name") == "bash" and get(three, "process.pid") not in (shell.pid, outer_pid)


def test_fork_only_child_keeps_the_image_it_was_forked_from(sensor: SensorProcess) -> None:
    """The shell forks a subshell that never execs, then execs sleep itself: the subshell's deferred fork record
    must reach user space before that exec, or the subshell would be reported as `sleep`."""
    script = "( i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 4 ) & exec /bin/sleep 0.3"
    shell = run_and_wait(["/bin/sh", "-c", script])
    end = sensor.wait_for(lambda d: get(d, "event.action") == "end" and get(d, "process.exit_code") == 4
                          and get(d, "process.parent.pid") == shell.pid)[-1]
    assert get(end, "process.args") == ["/bin/sh", "-c", script]
    assert get(end, "process.executable") == os.path.realpath("/bin/sh")
    assert get(sensor.exec_of(shell.pid), "process.executable") == os.path.realpath("/bin/sleep")


def test_documents_agree_with_ecs_field_list(sensor: SensorProcess) -> None:
    child = run_and_wait(["/bin/sh", "-c", "exit 3"])
    for doc in (sensor.exec_of(child.pid), sensor.end_of(child.pid)):
        assert ecs_problems(doc) == []
        assert get(doc, "event.category") == ["process"]
        assert get(doc, "ecs.version") == "9.4.0"
        assert get(doc, "data_stream.dataset") == get(doc, "event.dataset")
        for field in ("host.hostname", "host.id", "host.os.kernel", "host.architecture", "agent.version",
                      "process.entity_id", "process.start", "process.user.id", "@timestamp", "event.id"):
            assert get(doc, field), field


def test_summary_line_and_clean_exit_on_sigterm() -> None:
    running = SensorProcess()
    run_and_wait(["/bin/true"])
    code = running.stop()
    assert code == 0
    summary = [line for line in running.stderr().splitlines() if "events seen" in line]
    assert summary and " 0 lost" in summary[-1]


def test_without_privileges_one_clear_line_and_non_zero_exit() -> None:
    result = subprocess.run(
        # root with every capability dropped: the files stay readable, the kernel refuses BPF
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "sensor", "run",
         "--metrics-address", "off"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "privileges" in lines[0] and "Traceback" not in result.stderr
