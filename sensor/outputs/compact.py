"""One short human-readable line per document, for someone watching a host with sudo."""

from __future__ import annotations

from typing import Any

RED = "\033[1;31m"
DIM = "\033[2m"
RESET = "\033[0m"


def _shorten(text: str, limit: int) -> str:
    text = text.replace("\n", "\\n").replace("\r", "\\r")
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
        line = f"{stamp} ALERT {rule} [{where}] pid={pid} ppid={ppid} user={who} " \
               f"{_shorten(process.get('command_line', process.get('executable', '')), 160)}"
        return f"{RED}{line}{RESET}" if color else line
    action = event.get("action", "?")
    if action == "end":
        line = f"{stamp} end   [{where}] pid={pid} exit={process.get('exit_code', '?')} {process.get('name', '')}"
        return f"{DIM}{line}{RESET}" if color else line
    cmd = _shorten(process.get("command_line", "") or process.get("executable", ""), 160)
    return f"{stamp} exec  [{where}] pid={pid} ppid={ppid} user={who} {cmd}"
