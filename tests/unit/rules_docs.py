"""Real exec documents for the detection tests.

CONTAINER_SSH_EXEC was emitted by `container-sensor run` on this project's Debian 12 development machine
(kernel 6.18, podman 4.3.1 with runc, 2026-11-27) for `ssh -V` run by `/bin/sh -c` inside
`podman --runtime runc run --rootfs <tests/integration/rootfs.py root>`; trimmed of user/group blocks and
host ip/mac. The pipeline did not yet fill `process.entry_leader` then: the block added here is what the document
contract (and Elastic Defend) gives for a process under a container's init, the container's `sh`.
HOST_SSH_EXEC is the same run's `ssh -V` from a root shell on the host (no entry leader was filled either).
"""

from __future__ import annotations

import copy

_CONTAINER_ID = "6d451776baac9a35973104c91c86d763ef1508d4981c1c430d0686db9fa6c919"
_SH_COMMAND = ("ssh -V; ln -s /usr/bin/ssh /tmp/slogin; /tmp/slogin -V; ln /usr/bin/ssh /tmp/hl; /tmp/hl -V; "
               "cp /usr/bin/ssh /tmp/renamed; /tmp/renamed -V; /usr/sbin/sshd -V; true")
_SH = {"pid": 22499, "entity_id": "yk-W30_K7ACcjCT5maJSvRgi", "start": "2026-11-27T21:14:25.406852Z",
       "executable": "/bin/sh", "name": "sh", "args": ["/bin/sh", "-c", _SH_COMMAND], "args_count": 3,
       "command_line": "/bin/sh -c " + _SH_COMMAND, "interactive": False}
_HOST_SHELL = {"pid": 22444, "entity_id": "PB_0p3jDQSmatArta0rbpfm5", "start": "2026-11-27T21:14:24.201869Z",
               "executable": "/usr/bin/bash", "name": "bash", "args": ["bash", "/dev/fd/3"], "args_count": 2,
               "command_line": "bash /dev/fd/3", "interactive": False}
_HOST = {"hostname": "vm", "name": "vm", "architecture": "x86_64", "id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
         "os": {"type": "linux", "kernel": "6.18.44-fc-v657", "name": "Debian GNU/Linux", "family": "debian",
                "platform": "debian", "version": "12"}}

CONTAINER_SSH_EXEC: dict = {
    "@timestamp": "2026-11-27T21:14:25.437562Z",
    "ecs": {"version": "9.4.0"},
    "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec",
              "created": "2026-11-27T21:14:25.439399Z", "id": "ooEEGe1gdGmAIWNbpHzc", "sequence": 54,
              "dataset": "endpoint.events.process", "module": "container_sensor"},
    "data_stream": {"type": "logs", "dataset": "endpoint.events.process", "namespace": "default"},
    "host": _HOST,
    "agent": {"type": "container-sensor", "version": "0.1.0", "name": "vm",
              "id": "3d1219c7c4c5404aaa1f6d2a48adfda4"},
    "process": {
        "pid": 22510, "entity_id": "ahQDBTqU7UHaWIqlzFWOQn5Y", "start": "2026-11-27T21:14:25.437373Z",
        "executable": "/usr/bin/ssh", "name": "ssh", "args": ["ssh", "-V"], "args_count": 2,
        "command_line": "ssh -V", "interactive": False, "working_directory": "/",
        "user": {"id": "0"}, "group": {"id": "0"},
        "parent": dict(_SH),
        "group_leader": {**_SH, "same_as_process": False},
        "session_leader": {**_SH, "same_as_process": False},
        "entry_leader": {**_SH, "same_as_process": False, "entry_meta": {"type": "container"}},
    },
    "container": {"id": _CONTAINER_ID, "runtime": "podman", "name": "musing_ishizaka"},
    "container_sensor": {
        "cgroup": {"id": 253, "path": "/libpod_parent/libpod-" + _CONTAINER_ID},
        "namespaces": {"pid": 4026532327, "mnt": 4026532324, "net": 4026532328, "uts": 4026532325,
                       "ipc": 4026532326, "cgroup": 4026531835, "user": 4026531837},
        "args_truncated": False,
        "executable": {"inode": 2146800, "device": 65024},
    },
}

HOST_SSH_EXEC: dict = {
    "@timestamp": "2026-11-27T21:14:27.499129Z",
    "ecs": {"version": "9.4.0"},
    "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec",
              "created": "2026-11-27T21:14:27.499765Z", "id": "_mVXAfVE3VGqAfMsenzL", "sequence": 78,
              "dataset": "endpoint.events.process", "module": "container_sensor"},
    "data_stream": {"type": "logs", "dataset": "endpoint.events.process", "namespace": "default"},
    "host": _HOST,
    "process": {
        "pid": 22534, "entity_id": "AEOeykkFR0v3Tl74wur9me50", "start": "2026-11-27T21:14:27.497245Z",
        "executable": "/usr/bin/ssh", "name": "ssh", "args": ["ssh", "-V"], "args_count": 2,
        "command_line": "ssh -V", "interactive": False, "working_directory": "/work/main",
        "user": {"id": "0", "name": "root"}, "group": {"id": "0", "name": "root"},
        "parent": _HOST_SHELL,
        "group_leader": {**_HOST_SHELL, "same_as_process": False},
        "session_leader": {"pid": 4444, "entity_id": "MKbovcqaGMljZtmiubQ4lXhF",
                           "start": "2026-11-27T21:05:44.681869Z", "executable": "/usr/bin/bash", "name": "bash",
                           "args": ["bash", "/dev/fd/3"], "args_count": 2, "command_line": "bash /dev/fd/3",
                           "interactive": False, "same_as_process": False},
    },
    "container_sensor": {
        "cgroup": {"id": 1, "path": "/"},
        "namespaces": {"pid": 4026531836, "mnt": 4026531832, "net": 4026531833, "uts": 4026531838,
                       "ipc": 4026531839, "cgroup": 4026531835, "user": 4026531837},
        "args_truncated": False,
        "executable": {"inode": 2170933, "device": 65024},
    },
}


def container_ssh_exec(**process: object) -> dict:
    doc = copy.deepcopy(CONTAINER_SSH_EXEC)
    doc["process"].update(process)
    return doc


def host_ssh_exec() -> dict:
    return copy.deepcopy(HOST_SSH_EXEC)
