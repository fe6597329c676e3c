"""The built-in rule: ssh, sshd or autossh executed inside a container, recognised by identity, not only by
name.

Container evidence is `container.id` or an entry leader of type `container`; an sshd session inside a
container (entry leader type `sshd`) still counts when the container id is there. Host ssh never alerts.
"""

from __future__ import annotations

import time

from sensor.rules.alerts import container_evidence
from sensor.rules.identity import ExecutableIdentity, Recognition
from sensor.rules.metadata import RuleMetadata

# When none of an exec's processes shows the container's root, the next try waits this long.
SCAN_RETRY_S = 1.0
NOT_SSH_KEPT = 16384

BUILTIN_SSH_RULE = RuleMetadata(
    rule_id="0c6f3e52-6a0e-4c1b-9f4e-0b5c9a7d2e41",
    name="SSH Client or Server Started Inside a Container",
    description=("An ssh client, sshd server or autossh started inside a container, recognised by the "
                 "executed file's identity (name, symbolic link, hard link or content), not only by its name. "
                 "Containers rarely need ssh; an attacker uses it to move laterally or to keep a way back in."),
    severity="medium",
    risk_score=47,
    references=(
        "https://microsoft.github.io/Threat-Matrix-for-Kubernetes/techniques/SSH%20server%20running%20inside%20container/",
        "https://www.blackhillsinfosec.com/sshazam-hide-your-c2-inside-of-ssh/",
    ),
    version="1",
    ruleset="container-sensor built-in",
    license="Apache-2.0",
    threat=(
        {"framework": "MITRE ATT&CK",
         "tactic": {"id": "TA0008", "name": "Lateral Movement",
                    "reference": "https://attack.mitre.org/tactics/TA0008/"},
         "technique": [{"id": "T1021", "name": "Remote Services",
                        "reference": "https://attack.mitre.org/techniques/T1021/",
                        "subtechnique": [{"id": "T1021.004", "name": "SSH",
                                          "reference": "https://attack.mitre.org/techniques/T1021/004/"}]}]},
        {"framework": "MITRE ATT&CK",
         "tactic": {"id": "TA0003", "name": "Persistence",
                    "reference": "https://attack.mitre.org/tactics/TA0003/"},
         "technique": [{"id": "T1133", "name": "External Remote Services",
                        "reference": "https://attack.mitre.org/techniques/T1133/"}]},
    ),
)


def _is_exec_start(doc: dict) -> bool:
    event = doc.get("event")
    if not isinstance(event, dict):
        return False
    if event.get("action") != "exec":
        return False
    kinds = event.get("type")
    return kinds == "start" or (isinstance(kinds, list) and "start" in kinds)


def _container_key(doc: dict, sensor: dict) -> object:
    container = doc.get("container")
    if isinstance(container, dict) and container.get("id"):
        return container["id"]
    return ("mnt", (sensor.get("namespaces") or {}).get("mnt"))


def _live_pids(process: dict) -> list[int]:
    """The exec'd process first, then relatives that are likely still alive and share its mount namespace."""
    pids: list[int] = []
    for holder in (process, process.get("parent"), process.get("group_leader"), process.get("session_leader"),
                   process.get("entry_leader")):
        if isinstance(holder, dict):
            pid = holder.get("pid")
            if isinstance(pid, int) and pid > 0 and pid not in pids:
                pids.append(pid)
    return pids


class BuiltinSshRule:
    def __init__(self, identity: ExecutableIdentity, max_containers: int = 10000) -> None:
        self.identity = identity
        self.metadata = BUILTIN_SSH_RULE
        # container -> 0.0 once its ssh binaries are recorded, else when to try again; oldest first
        self._scanned: dict[object, float] = {}
        self._max_containers = max_containers
        # (container, device, inode, ctime, executable, name) of execs found not to be ssh
        self._not_ssh: set[tuple] = set()

    def match(self, doc: dict) -> tuple[Recognition, list[str]] | None:
        """(how ssh was recognised, which fields place it in a container) or None."""
        if not _is_exec_start(doc):
            return None
        process = doc.get("process")
        if not isinstance(process, dict):
            return None
        sensor = doc.get("container_sensor") or {}
        executable = sensor.get("executable") or {}
        device, inode, ctime_ns = executable.get("device"), executable.get("inode"), executable.get("ctime_ns")
        container = _container_key(doc, sensor)
        # A container's storm of execs of a few files that are not ssh: decided once per file and container
        seen_key = (container, device, inode, ctime_ns, process.get("executable"), process.get("name"))
        if seen_key in self._not_ssh:
            return None
        evidence = container_evidence(doc)
        if not evidence:
            return None
        pids = _live_pids(process)
        if self._scan_once(container, pids):
            self._not_ssh.clear()  # new ssh binaries may be known now
        recognition = self.identity.classify(
            process.get("executable"), process.get("name"),
            device if isinstance(device, int) else None, inode if isinstance(inode, int) else None, pids,
            ctime_ns if isinstance(ctime_ns, int) else None)
        if recognition is None:
            if (self._scanned.get(container) == 0.0 and isinstance(device, int) and isinstance(inode, int)
                    and isinstance(ctime_ns, int) and self.identity.settled_not_ssh(device, inode, ctime_ns)):
                if len(self._not_ssh) >= NOT_SSH_KEPT:
                    self._not_ssh.clear()
                self._not_ssh.add(seen_key)
            return None
        self._not_ssh.clear()  # recognising one may have taught the identity a new inode
        return recognition, evidence

    def _scan_once(self, key: object, pids: list[int]) -> bool:
        """On a container's first exec, record the ssh binaries at its usual paths (a few stats, once). True
        when it looked."""
        retry_at = self._scanned.get(key)
        if retry_at is not None and (retry_at == 0.0 or time.monotonic() < retry_at):
            return False
        done = self.identity.learn_root(pids)
        if key not in self._scanned and len(self._scanned) >= self._max_containers:
            del self._scanned[next(iter(self._scanned))]
        self._scanned[key] = 0.0 if done else time.monotonic() + SCAN_RETRY_S
        return True
