"""The built-in network rule: an ssh connection to or from a container, from the connection documents.

It fires on `connection_attempted` / `connection_accepted` documents with container evidence when
- the connection is to port 22 (an attempt) or accepted on local port 22;
- the process is one the built-in exec rule recognised as an ssh program in a container (by name, link or
  content: a renamed sshd on port 8022, a copied client to any port): its accepts and attempts, whatever the port;
- the connection is to an address and port on which such an ssh server accepted before (a second container
  reaching the first one's renamed sshd).

The processes and endpoints it remembers are bounded (oldest forgotten first). A connection document carries
`source` (the local end) and `destination` (the peer), as the sensor writes them; the alert copies them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sensor.rules.alerts import container_evidence
from sensor.rules.builtin_ssh import SSH_LATERAL_MOVEMENT
from sensor.rules.metadata import RuleMetadata

SSH_PORT = 22
KEPT_PROCESSES = 16384
KEPT_ENDPOINTS = 4096

BUILTIN_SSH_NETWORK_RULE = RuleMetadata(
    rule_id="5b0e3f6a-2c1d-4e8f-9a7b-3d6c1e0f4a52",
    name="SSH Connection To or From a Container",
    description=("A TCP connection to or from a process inside a container on the ssh port (22), or made or "
                 "accepted by a process recognised as an ssh client or server (whatever its name or port), or to "
                 "a port on which such a server listens. Containers rarely need ssh; an attacker uses it to move "
                 "laterally or to keep a way back in."),
    severity="medium",
    risk_score=47,
    references=("https://attack.mitre.org/techniques/T1021/004/",),
    version="1",
    ruleset="container-sensor built-in",
    license="Apache-2.0",
    threat=(SSH_LATERAL_MOVEMENT,),
)

REASON_PORT = "ssh_port"              # to port 22, or accepted on it
REASON_PROCESS = "ssh_process"        # made or accepted by a process recognised as ssh
REASON_ENDPOINT = "ssh_server_port"   # to an address and port where a recognised ssh server accepted


@dataclass(frozen=True)
class NetworkMatch:
    reason: str
    port: int                # the ssh side's port
    program: str = ""        # the recognised program, when the process is one


class BuiltinSshNetworkRule:
    def __init__(self, kept_processes: int = KEPT_PROCESSES, kept_endpoints: int = KEPT_ENDPOINTS) -> None:
        self.metadata = BUILTIN_SSH_NETWORK_RULE
        # entity id, or (device, inode) of the executed file -> (program, role), of execs the exec rule
        # recognised in a container
        self._processes: OrderedDict[object, tuple[str, str]] = OrderedDict()
        # (address, port) where a recognised ssh server accepted
        self._endpoints: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._kept_processes = max(1, kept_processes)
        self._kept_endpoints = max(1, kept_endpoints)

    def remember(self, entity_id: object, program: str, role: str, file: tuple[object, object] | None = None) -> None:
        """The exec rule recognised this process as an ssh program in a container; `file` is the executed
        file's (device, inode), which its forks share (a daemon's listener is the fork of what was exec'd)."""
        for key in (entity_id, file):
            if not key or (isinstance(key, tuple) and not all(isinstance(v, int) for v in key)):
                continue
            self._processes[key] = (program, role)
            self._processes.move_to_end(key)
        while len(self._processes) > self._kept_processes:
            self._processes.popitem(last=False)

    def _known(self, doc: dict) -> tuple[str, str] | None:
        process = doc.get("process")
        known = self._processes.get(process.get("entity_id")) if isinstance(process, dict) else None
        if known is None:
            executable = ((doc.get("container_sensor") or {}).get("executable") or {})
            known = self._processes.get((executable.get("device"), executable.get("inode")))
        return known

    def match(self, doc: dict) -> NetworkMatch | None:
        event = doc.get("event")
        if not isinstance(event, dict) or event.get("kind") != "event":
            return None
        action = event.get("action")
        if action not in ("connection_attempted", "connection_accepted"):
            return None
        if not container_evidence(doc):
            return None
        local, peer = doc.get("source"), doc.get("destination")
        if not isinstance(local, dict) or not isinstance(peer, dict):
            return None
        known = self._known(doc)
        accepted = action == "connection_accepted"
        ssh_end = local if accepted else peer   # the server's side: the local end of an accept, else the peer
        port = ssh_end.get("port")
        if not isinstance(port, int):
            return None
        if known is not None:
            program, role = known
            if accepted and role == "server" and isinstance(local.get("ip"), str):
                self._learn((local["ip"], port), program)
            return NetworkMatch(REASON_PROCESS, port, program)
        if port == SSH_PORT:
            return NetworkMatch(REASON_PORT, port)
        if not accepted and isinstance(peer.get("ip"), str):
            program = self._endpoints.get((peer["ip"], port))
            if program is not None:
                return NetworkMatch(REASON_ENDPOINT, port, program)
        return None

    def _learn(self, endpoint: tuple[str, int], program: str) -> None:
        self._endpoints[endpoint] = program
        self._endpoints.move_to_end(endpoint)
        while len(self._endpoints) > self._kept_endpoints:
            self._endpoints.popitem(last=False)

    @property
    def sizes(self) -> dict[str, int]:
        return {"ssh_network_processes": len(self._processes), "ssh_network_endpoints": len(self._endpoints)}
