"""One short human-readable line per document, for someone watching a host with sudo."""

from __future__ import annotations

import re
from typing import Any

RED = "\033[1;31m"
DIM = "\033[2m"
RESET = "\033[0m"

# Written to a terminal, these act instead of showing: C0 controls (ESC starts CSI and OSC sequences that move the
# cursor, retitle the window, or write the clipboard), DEL, C1 controls (U+009B is a one-character CSI on some
# terminals), line and paragraph separators, and the bidi controls that reorder the text a reader sees.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


# a fixed width, like "exec " and "end  "
_LABELS = {"fork": "fork ", "already_running": "run  ", "uid_change": "uid  ", "gid_change": "gid  ",
           "session_id_change": "sid  "}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """TEXT with every character a terminal would act on shown as an escape (an ESC as \\e, others \\xNN or
    \\uNNNN); the argument, path and name texts a process chose reach the terminal only this way."""
    return _UNSAFE.sub(_escape, text)


def _shorten(text: str, limit: int) -> str:
    text = safe(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compact_line(doc: dict[str, Any], *, color: bool = False) -> str:
    event = doc.get("event", {})
    process = doc.get("process", {})
    container = doc.get("container")
    stamp = doc.get("@timestamp", "")[11:23]
    where = f"{container.get('runtime', '?')}:{container.get('name') or container.get('id', '')[:12]}" \
        if container else "host"
    pid = process.get("pid", "?")
    ppid = process.get("parent", {}).get("pid", "?")
    user = process.get("user", {})
    who = user.get("name") or user.get("id", "?")
    if event.get("kind") == "alert":
        rule = doc.get("rule", {}).get("name", "alert")
        line = safe(f"{stamp} ALERT {rule} [{where}] pid={pid} ppid={ppid} user={who} ") + \
            _shorten(process.get("command_line", process.get("executable", "")), 160)
        return f"{RED}{line}{RESET}" if color else line
    action = event.get("action", "?")
    if action == "end":
        line = safe(f"{stamp} end   [{where}] pid={pid} exit={process.get('exit_code', '?')} {process.get('name', '')}")
        return f"{DIM}{line}{RESET}" if color else line
    if action in ("connection_attempted", "connection_accepted"):
        source, destination = doc.get("source", {}), doc.get("destination", {})
        arrow = "->" if action == "connection_attempted" else "<-"
        line = (f"{stamp} {'conn ' if action == 'connection_attempted' else 'accpt'} [{where}] pid={pid} "
                f"{source.get('ip', '?')}:{source.get('port', '?')} {arrow} "
                f"{destination.get('ip', '?')}:{destination.get('port', '?')} {process.get('name', '')}")
        return safe(line)
    cmd = _shorten(process.get("command_line", "") or process.get("executable", ""), 160)
    label = _LABELS.get(action, "exec ")
    if action in ("uid_change", "gid_change", "session_id_change"):
        now = {"uid_change": f"uid={doc.get('user', {}).get('id', '?')}",
               "gid_change": f"gid={doc.get('group', {}).get('id', '?')}",
               "session_id_change": f"sid={pid}"}[action]
        return safe(f"{stamp} {label} [{where}] pid={pid} {now} ") + cmd
    return safe(f"{stamp} {label} [{where}] pid={pid} ppid={ppid} user={who} ") + cmd
