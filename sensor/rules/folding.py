"""Folding repeated identical alerts: the first goes out at once, repeats inside the window are counted, and a
summary carrying the count goes out when the window closes. Nothing is dropped without being counted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sensor.rules.alerts import alert_id, utc_now_iso


def fold_key(rule_id: str, doc: dict) -> tuple:
    """Same rule, same container, same executable run by the same path, same parent: the file reached through a
    link of another name is another way in, and alerts of its own."""
    process = doc.get("process") or {}
    parent = process.get("parent") or {}
    container = doc.get("container") or {}
    custom = doc.get("container_sensor") or {}
    where = container.get("id") or (custom.get("namespaces") or {}).get("mnt")
    who = parent.get("entity_id") or (parent.get("pid"), parent.get("executable"))
    passed = (custom.get("executable") or {}).get("passed")
    # a connection's peer: repeats to one peer fold, another peer is another alert
    peer = doc.get("destination") or {}
    return (rule_id, where, process.get("executable") or process.get("name"), passed, who, peer.get("ip"),
            peer.get("port"))


@dataclass
class _Window:
    opened_s: float
    first_alert_id: str
    first_time: str
    repeats: int = 0
    make_last: Callable[[], dict] | None = None


@dataclass
class AlertFolder:
    window_s: float
    max_windows: int = 50000
    _windows: dict[tuple, _Window] = field(default_factory=dict)
    folded: int = 0
    summaries: int = 0
    windows_closed_early: int = 0

    def offer(self, key: tuple, now_s: float, make_alert: Callable[[], dict]) -> list[dict]:
        """Alerts to send now: the new one if it opens a window, nothing if it is folded into an open window
        (its document is only built if it ends up in the summary), plus any summary closed on the way."""
        out: list[dict] = []
        window = self._windows.get(key)
        if window is not None and self.window_s > 0 and now_s - window.opened_s < self.window_s:
            window.repeats += 1
            window.make_last = make_alert
            self.folded += 1
            return out
        if window is not None:
            out.extend(self._close(key))
        if self.window_s > 0 and len(self._windows) >= self.max_windows:
            self.windows_closed_early += 1
            out.extend(self._close(next(iter(self._windows))))
        alert = make_alert()
        if self.window_s > 0:
            details = alert["container_sensor"]["alert"]
            first_time = details.get("original_time") or alert.get("@timestamp") or ""
            self._windows[key] = _Window(now_s, alert["event"]["id"], first_time)
        alert["container_sensor"]["alert"]["fold"] = {"count": 1, "window_s": self.window_s}
        out.append(alert)
        return out

    def tick(self, now_s: float) -> list[dict]:
        expired = []
        for key, window in self._windows.items():  # opened in time order: stop at the first still open
            if now_s - window.opened_s < self.window_s:
                break
            expired.append(key)
        out: list[dict] = []
        for key in expired:
            out.extend(self._close(key))
        return out

    def flush(self) -> list[dict]:
        out: list[dict] = []
        for key in list(self._windows):
            out.extend(self._close(key))
        return out

    def _close(self, key: tuple) -> list[dict]:
        window = self._windows.pop(key)
        if not window.repeats or window.make_last is None:
            return []
        summary = window.make_last()
        last_time = summary.get("container_sensor", {}).get("alert", {}).get("original_time")
        summary["event"]["id"] = alert_id(window.first_alert_id, "summary", str(window.repeats))
        summary["event"]["created"] = utc_now_iso()
        summary["@timestamp"] = summary["event"]["created"]
        summary["container_sensor"]["alert"]["fold"] = {
            "count": window.repeats + 1, "folded": window.repeats, "window_s": self.window_s,
            "first_alert_id": window.first_alert_id, "first_time": window.first_time,
            "last_time": last_time}
        self.summaries += 1
        return [summary]
