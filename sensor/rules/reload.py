"""Rules reloaded while the sensor runs: on SIGHUP, and when the rule files change (a Kubernetes ConfigMap
mounted as a directory is updated by swapping a `..data` link, which changes every file's identity).

A thread of its own looks at the files (every `poll_s`, or at once after SIGHUP) and, when they changed, loads
them: parsing and compiling a few hundred rules takes a second, which the event loop must not spend. The loop
takes the new set between two batches (`apply_pending`), so every event is evaluated by one set or the other,
and nothing is dropped meanwhile. A set that fails to load (a path gone, a rule folder emptied by mistake) is
refused and the rules in force stay, said in one line; refused rules are logged as at start.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("container_sensor")

Signature = tuple[tuple[str, int, int, int], ...]


def rules_signature(paths: Sequence[Path]) -> Signature:
    """(path, inode, size, mtime) of every rule file under PATHS, links followed: changes when any file does."""
    from sensor.rules.loader import RulesPathError, rule_files

    found: list[tuple[str, int, int, int]] = []
    for root in paths:
        try:
            files = rule_files(root)
        except RulesPathError:
            continue
        for file in files:
            try:
                st = os.stat(file)
            except OSError:
                continue
            found.append((str(file), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


class RulesReloader:
    def __init__(self, paths: Sequence[Path], apply: Callable[[list[Any]], None], *, poll_s: float = 5.0,
                 load: Callable[[Path], tuple[list[Any], list[Any]]] | None = None,
                 on_refused: Callable[[], None] | None = None) -> None:
        if load is None:
            from sensor.rules.loader import load_rules as load
        self._paths = tuple(paths)
        self._apply = apply
        self._load = load
        self._poll_s = poll_s
        self._on_refused = on_refused
        self._wake = threading.Event()
        self._closed = False
        self._pending: tuple[list[Any], list[Any]] | None = None  # written by the thread, taken by the loop
        self._signature = rules_signature(self._paths)
        self.counts = {"rule_reloads_applied": 0, "rule_reloads_refused": 0}
        self._thread = threading.Thread(target=self._run, name="rules-reload", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Reload now (SIGHUP); safe to call from a signal handler."""
        self._wake.set()

    def apply_pending(self) -> None:
        """On the event loop, between batches: the new set, if one is ready."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        loaded, refused = pending
        for refusal in refused:
            log.warning("rule refused: %s (%s): %s", refusal.name, refusal.path, refusal.reason)
        self._apply(loaded)
        self.counts["rule_reloads_applied"] += 1
        log.info("rules reloaded: %d loaded, %d refused", len(loaded), len(refused))

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            asked = self._wake.wait(self._poll_s)
            self._wake.clear()
            if self._closed:
                return
            signature = rules_signature(self._paths)
            if not asked and signature == self._signature:
                continue
            try:
                loaded: list[Any] = []
                refused: list[Any] = []
                for path in self._paths:
                    more, less = self._load(path)
                    loaded += more
                    refused += less
                if not loaded and not refused:
                    raise ValueError("no rule file found")
            except Exception as exc:  # any failure keeps the rules in force
                self.counts["rule_reloads_refused"] += 1
                if self._on_refused is not None:
                    self._on_refused()
                log.warning("rules not reloaded, the rules in force stay: %s", exc)
                self._signature = signature
                continue
            self._signature = signature
            self._pending = (loaded, refused)
