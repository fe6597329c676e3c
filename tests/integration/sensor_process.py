"""Runs the real `container-sensor run` as a subprocess and reads its NDJSON output, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"

Doc = dict[str, Any]


def sensor_command() -> list[str]:
    return [sys.executable, "-m", "sensor"]


def get(doc: Doc, dotted: str, default: Any = None) -> Any:
    """A field of a nested document by its dotted ECS name."""
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def invoked(doc: Doc) -> str | None:
    """The path the exec was given: process.executable is the file it led to (a link's target, busybox for an
    applet, the interpreter of a script), the path as passed is kept beside it where it differs."""
    return get(doc, "container_sensor.executable.passed") or get(doc, "process.executable")


def invoked_name(doc: Doc) -> str | None:
    """The last component of `invoked`: the name a command was run under ("echo" for busybox's applet)."""
    path = invoked(doc)
    return path.rsplit("/", 1)[-1] if isinstance(path, str) else None


class SensorProcess:
    """`container-sensor run` writing NDJSON to a file; the test reads documents as they arrive."""

    def __init__(self, *extra_args: str, startup_timeout: float = 60.0, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sensor-test-"))
        self.out_path = self.workdir / "events.ndjson"
        self.err_path = self.workdir / "stderr.log"
        self.ready = self.workdir / "ready"
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [*sensor_command(), "run", "--ready-file", str(self.ready), "--metrics-address", "off",
             "--log-format", "text", *extra_args],
            stdout=self._out, stderr=self._err, cwd=REPO, env=env,
        )
        self._reader = open(self.out_path, "rb")  # noqa: SIM115
        self._pending = b""
        self.docs: list[Doc] = []
        deadline = time.monotonic() + startup_timeout
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"sensor exited with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sensor not ready after {startup_timeout}s: {self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def _read_new(self) -> None:
        chunk = self._reader.read()
        if not chunk:
            return
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if line:
                self.docs.append(json.loads(line))

    def wait_for(self, predicate: Callable[[Doc], bool], timeout: float = 10.0, count: int = 1) -> list[Doc]:
        """Documents matching predicate, once at least `count` have arrived; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self._read_new()
            found = [d for d in self.docs if predicate(d)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                recent = [(get(d, "event.kind"), get(d, "event.action"), get(d, "process.executable"),
                           (get(d, "container.id") or "")[:12]) for d in self.docs[-12:]]
                raise AssertionError(f"{len(found)}/{count} matching documents after {timeout}s "
                                     f"({len(self.docs)} documents in all; the last: {recent})")
            if self.proc.poll() is not None:
                raise AssertionError(f"sensor died: {self.stderr()}")
            time.sleep(0.02)

    def exec_of(self, pid: int, timeout: float = 10.0) -> Doc:
        return self.wait_for(lambda d: get(d, "event.action") == "exec" and get(d, "process.pid") == pid,
                             timeout)[-1]

    def end_of(self, pid: int, timeout: float = 10.0) -> Doc:
        return self.wait_for(lambda d: get(d, "event.action") == "end" and get(d, "process.pid") == pid,
                             timeout)[-1]

    def alerts(self) -> list[Doc]:
        self._read_new()
        return [d for d in self.docs if get(d, "event.kind") == "alert"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        self._err.close()
        self._read_new()
        return self.proc.returncode

    def __enter__(self) -> SensorProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_and_wait(argv: Iterable[str | bytes], **kwargs: Any) -> subprocess.Popen:
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    proc.wait(30)
    return proc
