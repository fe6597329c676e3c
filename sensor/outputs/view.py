"""`container-sensor view FILE|-`: the NDJSON the sensor wrote, for a person on the node. One line per document
as the compact format writes it, each process indented under its parent within its container (a process tree
per container, drawn as the documents come), a header at each container's first document, alerts in red.

Everything a process chose (arguments, names, paths, container names) reaches the terminal escaped
(compact.safe). Lines that are not documents are counted and skipped. The tree remembers a bounded number of
processes, oldest forgotten first: a process whose parent was forgotten starts at the left again.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import IO, Any

from sensor.outputs.compact import DIM, RESET, compact_line, safe

MAX_REMEMBERED = 65536
MAX_DEPTH = 12
BOLD = "\033[1m"


class TreeView:
    def __init__(self, *, color: bool = False, alerts_only: bool = False) -> None:
        self.color = color
        self.alerts_only = alerts_only
        self._depth: OrderedDict[str, int] = OrderedDict()  # process entity id -> depth in its container's tree
        self._containers_seen: OrderedDict[str, None] = OrderedDict()
        self.skipped = 0

    def _where(self, doc: dict[str, Any]) -> tuple[str, str]:
        container = doc.get("container")
        if not isinstance(container, dict) or not container.get("id"):
            return "host", "host"
        cid = str(container["id"])
        image = container.get("image") if isinstance(container.get("image"), dict) else {}
        title = f"container {container.get('name') or cid[:12]}"
        details = [str(x) for x in (container.get("runtime"), image.get("name")) if x]
        if details:
            title += f" ({', '.join(details)})"
        return cid, title

    def _depth_of(self, process: dict[str, Any], key: str) -> int:
        entity = process.get("entity_id")
        parent = (process.get("parent") or {}).get("entity_id")
        depth = 0
        if isinstance(parent, str) and f"{key}/{parent}" in self._depth:
            depth = min(self._depth[f"{key}/{parent}"] + 1, MAX_DEPTH)
        if isinstance(entity, str):
            self._depth[f"{key}/{entity}"] = depth
            self._depth.move_to_end(f"{key}/{entity}")
            while len(self._depth) > MAX_REMEMBERED:
                self._depth.popitem(last=False)
        return depth

    def lines(self, raw: str) -> list[str]:
        """The lines to print for one NDJSON line."""
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("event"), dict) or \
                not isinstance(doc.get("process", {}), dict):
            if raw.strip():
                self.skipped += 1
            return []
        is_alert = doc["event"].get("kind") == "alert"
        if self.alerts_only and not is_alert:
            return []
        out = []
        key, title = self._where(doc)
        if key not in self._containers_seen:
            self._containers_seen[key] = None
            while len(self._containers_seen) > MAX_REMEMBERED:
                self._containers_seen.popitem(last=False)
            header = f"── {safe(title)} ──"
            out.append(f"{BOLD}{header}{RESET}" if self.color else header)
        depth = self._depth_of(doc.get("process") or {}, key)
        line = compact_line(doc, color=self.color)
        indent = "  " * depth + ("└ " if depth else "")
        out.append(f"{DIM}{indent}{RESET}{line}" if self.color and indent else indent + line)
        return out


def follow(stream: IO[str], poll_s: float = 0.25) -> Iterator[str]:
    """The lines of STREAM, then the lines appended to it, until interrupted."""
    pending = ""
    while True:
        chunk = stream.readline()
        if not chunk:
            time.sleep(poll_s)
            continue
        pending += chunk
        if pending.endswith("\n"):
            yield pending
            pending = ""


def render(lines: Iterable[str], view: TreeView) -> Iterator[str]:
    for raw in lines:
        yield from view.lines(raw)
