"""Compiles bpf/sensor.c with BCC, loads and attaches it, hands the sensor the file descriptors that keep it
alive, and exits. Run as a short-lived child of the sensor (sensor/probe/loader.py starts it):

    python -m sensor.probe.bcc_loader SOCKET_FD SPEC_JSON

The only module that imports bcc. BCC keeps LLVM and clang mapped for the life of a process that imports it
(about 115 MB resident), although they are needed only for the second the compile takes: here they leave with
this process. What keeps the program running is a set of kernel objects, each held by a file descriptor:
the ring-buffer and counter maps, and one link per attach point (a perf event for a tracepoint, a bpf_link for a
raw tracepoint). They are sent to the parent over a Unix socket (SCM_RIGHTS), and this process leaves with
os._exit, skipping BCC's clean-up, which would detach. Nothing is pinned in bpffs: when the sensor exits, even
by SIGKILL, the kernel closes its descriptors and detaches everything.

One message goes back: JSON with "maps" (name -> index into the descriptors), "links" (attach point -> index)
and "logs" (what this process would have logged), or "error" (one line for the operator) and no descriptors.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from sensor.probe.btf import BTFError, KernelBTF
from sensor.probe.kernel_headers import HeaderError, ensure_kernel_headers
from sensor.probe.kernel_offsets import ACCEPT_OFFSETS, kernel_macros
from sensor.probe.layout import static_asserts
from sensor.probe.tracefs import TracefsError, ensure_tracefs

log = logging.getLogger("container_sensor")

# The maps the sensor reads after this process has gone; BCC's own tables are not needed there.
SHARED_MAPS = ("events", "loss_counters")
PR_SET_PDEATHSIG = 1


class LoadFailure(Exception):
    """The program cannot be compiled, loaded or attached; the message is the operator's line."""


class _Collected(logging.Handler):
    """Keeps what the preparation logs (a fallback header tree linked, a tracefs mounted) for the parent,
    which logs it with its own configuration."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def compile_and_attach(spec: dict[str, Any]) -> tuple[Any, list[tuple[str, int]], list[tuple[str, int]]]:
    """Returns BCC's BPF object (kept alive until the descriptors are sent), the shared maps' and the links'
    (name, fd)."""
    try:
        tracefs = ensure_tracefs()
        macros = kernel_macros(KernelBTF.from_file())
        ensure_kernel_headers()
    except (TracefsError, BTFError, HeaderError) as exc:
        raise LoadFailure(str(exc)) from exc
    try:
        from bcc import BPF
    except ImportError as exc:
        raise LoadFailure(
            "the bcc Python module is missing: install Debian's python3-bpfcc and use a venv made with "
            "'/usr/bin/python3 -m venv --system-site-packages'"
        ) from exc
    source_dir = Path(spec["source_dir"])
    source = source_dir / "sensor.c"
    if not source.is_file():
        raise LoadFailure(f"BPF source not found at {source} (set SENSOR_BPF_DIR)")
    cflags = [f"-I{source_dir}", f"-DRINGBUF_PAGES={spec['ringbuf_pages']}", f"-DARGS_MAX={spec['args_max']}",
              f"-DENV_MAX={int(spec.get('env_max') or 0)}"]
    cflags += [f"-D{name}={value}" for name, value in macros.items()]
    if spec.get("cred_events"):
        if (tracefs / "events" / "syscalls" / "sys_exit_setuid").is_dir():
            cflags.append("-DCRED_EVENTS")
        else:
            log.warning("no syscall tracepoints in this kernel (CONFIG_FTRACE_SYSCALLS): no uid_change, "
                        "gid_change or session_id_change documents")
    if spec.get("module_events"):
        if (tracefs / "events" / "module" / "module_load").is_dir():
            cflags.append("-DMODULE_EVENTS")
        else:
            log.info("no module:module_load tracepoint in this kernel (built without loadable modules): no "
                     "load_module documents, and no module to load")
    if spec.get("fork_events"):
        cflags.append("-DFORK_EVENTS")
    if spec.get("net_events"):
        cflags += _net_cflags(tracefs, macros)
    # sensor/probe/layout.py's checks of every record member's offset and size, compiled for the BPF target
    # itself: a sensor.h that does not match the decoder fails here, naming the member, and sends no records.
    # BCC reads src_file into text the same way, so the program is the same.
    text = source.read_bytes() + b"\n" + static_asserts().encode()
    try:
        bpf = BPF(text=text, cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception on compile or load failure
        raise LoadFailure(f"cannot compile or load the BPF program {source}: {exc}") from exc
    maps = [(name, bpf[name].map_fd) for name in SHARED_MAPS]
    links = [(_text(point), fd) for point, fd in bpf.tracepoint_fds.items()]
    links += [(f"raw:{_text(point)}", fd) for point, fd in bpf.raw_tracepoint_fds.items()]
    if not links:
        raise LoadFailure(f"the BPF program {source} attached to no tracepoint")
    return bpf, maps, links


def _net_cflags(tracefs: Path, macros: dict[str, int]) -> list[str]:
    """The connection probes this kernel allows: connects need sock:inet_sock_set_state, accepts the syscall
    tracepoints and the socket members in BTF. What is missing is said once."""
    if not (tracefs / "events" / "sock" / "inet_sock_set_state").is_dir():
        log.warning("no sock:inet_sock_set_state tracepoint in this kernel: no connection_attempted or "
                    "connection_accepted documents")
        return []
    flags = ["-DNET_EVENTS"]
    if not (tracefs / "events" / "syscalls" / "sys_exit_accept4").is_dir():
        log.warning("no syscall tracepoints in this kernel (CONFIG_FTRACE_SYSCALLS): no connection_accepted "
                    "documents")
    elif not all(name in macros for name in ACCEPT_OFFSETS):
        log.warning("this kernel's BTF lacks socket members the accept probe reads (no IPv6?): no "
                    "connection_accepted documents")
    else:
        flags.append("-DNET_ACCEPT_EVENTS")
    return flags


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


def main(argv: list[str]) -> int:
    channel = socket.socket(fileno=int(argv[1]))
    # The parent decides when to stop (its SIGINT/SIGTERM handling covers the load); should it die while this
    # process compiles, this one goes too instead of attaching a program nobody reads.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return 1  # the parent is gone already
    collected = _Collected()
    logging.getLogger("container_sensor").addHandler(collected)
    logging.getLogger("container_sensor").setLevel(logging.DEBUG)
    try:
        _bpf, maps, links = compile_and_attach(json.loads(argv[2]))
    except LoadFailure as failure:
        channel.sendmsg([json.dumps({"error": str(failure), "logs": collected.lines}).encode()])
        return 1
    except Exception as exc:  # an unexpected failure is still one line in the parent, not a lost traceback
        channel.sendmsg([json.dumps({"error": f"the BPF loader failed: {type(exc).__name__}: {exc}",
                                     "logs": collected.lines}).encode()])
        return 1
    fds = [fd for _name, fd in maps] + [fd for _name, fd in links]
    reply = {
        "maps": {name: index for index, (name, _fd) in enumerate(maps)},
        "links": {name: len(maps) + index for index, (name, _fd) in enumerate(links)},
        "logs": collected.lines,
    }
    socket.send_fds(channel, [json.dumps(reply).encode()], fds)
    return 0


if __name__ == "__main__":
    # os._exit: BCC's atexit clean-up would detach the probes and close what was just sent.
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
