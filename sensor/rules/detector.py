"""The detection stage: the built-in ssh-in-container rule plus loaded Elastic EQL rules, run on every event.

`evaluate` never raises: an error inside one rule is counted against that rule (first one logged) and the
other rules and the event go on. Alerts are folded per (rule, container, executable, parent) within
`fold_window_s`; `tick` hands out the summaries of windows that closed and `flush` all that are still open
(call it at shutdown).
The folding clock is `clock` (time.monotonic by default): pass the same clock's reading to `tick`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from sensor.containers.rootpins import DEFAULT_MAX_TOTAL, RootPins
from sensor.rules.alerts import build_alert
from sensor.rules.builtin_ssh import UNKNOWN_ERROR, BuiltinSshRule, SshMatch, open_files_limit
from sensor.rules.builtin_ssh_network import BuiltinSshNetworkRule
from sensor.rules.folding import AlertFolder, fold_key
from sensor.rules.identity import ExecutableIdentity, program_kind
from sensor.rules.loader import LoadedRule
from sensor.rules.metadata import RuleMetadata
from sensor.rules.offthread import BoundedWorker
from sensor.rules.sequences import SequenceMatch, SequenceMatcher

log = logging.getLogger(__name__)


class Detector:
    def __init__(self, rules: list[LoadedRule], *, builtin_ssh: bool = True, fold_window_s: float = 60.0,
                 max_sequences: int = 10000, proc_root: str = "/proc",
                 clock: Callable[[], float] = time.monotonic, identity_wait_s: float = 0.05,
                 rule_budget_s: float | None = 0.05, budget_clock: Callable[[], float] = time.perf_counter,
                 budget_cpu_clock: Callable[[], float] = time.thread_time, host_mnt_ns: int | None = None) -> None:
        self._max_sequences = max_sequences
        self._single: list[tuple[LoadedRule, Any, Any, bool]] = []
        self._sequences: list[tuple[LoadedRule, SequenceMatcher]] = []
        self._has_rules = False
        self._set_rules(rules)
        self._identity = ExecutableIdentity(proc_root)
        self._identity_worker = BoundedWorker("ssh identity", wait_s=identity_wait_s)
        # a sixteenth of the open files limit at most (sensor.run.raise_open_files raises it at start)
        self._root_pins = (RootPins(proc_root, max_total=min(DEFAULT_MAX_TOTAL, max(8, open_files_limit() // 16)))
                           if builtin_ssh else None)
        self._builtin = (BuiltinSshRule(self._identity, worker=self._identity_worker, pins=self._root_pins,
                                        proc_root=proc_root, host_mnt_ns=host_mnt_ns) if builtin_ssh else None)
        self._network = BuiltinSshNetworkRule() if builtin_ssh else None
        self._identity_note: dict | None = None
        self._folder = AlertFolder(fold_window_s)
        self._clock = clock
        self._counts = {"events": 0, "alerts": 0, "builtin_matches": 0, "builtin_network_matches": 0,
                        "rule_matches": 0, "rule_errors": 0,
                        "detector_errors": 0, "alerts_skipped": 0, "rule_reloads": 0, "rule_reloads_refused": 0}
        self.rule_errors: dict[str, int] = {}
        self.rule_matches: dict[str, int] = {}
        # rule name -> alerts it raised (folded repeats not counted, their summaries are): bounded by the rules
        # loaded over the run, which only the node's administrator chooses
        self.alerts_by_rule: dict[str, int] = {}
        # A ceiling on the CPU time of one event's Elastic rule evaluation (None: none): past it the rules left are
        # skipped for that event and counted, so no document can hold the pipeline thread for long whatever the
        # rules are. The cheap wall clock is read per rule; the thread's CPU clock only at the start of an event
        # and when the wall clock says the budget may be spent.
        self._budget_s = rule_budget_s
        self._budget_clock = budget_clock
        self._budget_cpu = budget_cpu_clock
        self._cpu_start = 0.0
        self._budget_counts = {"rule_budget_exceeded": 0, "rules_skipped_budget": 0}

    def _set_rules(self, rules: list[LoadedRule]) -> None:
        # a sequence rule loaded again unchanged keeps its matcher, and with it the sequences under way
        kept = {(rule.rule_id, rule.query): matcher for rule, matcher in self._sequences}
        self._single = [(rule, rule.compiled.predicate, rule.compiled.required_names, rule.compiled.names_folded)
                        for rule in rules if not rule.compiled.is_sequence]
        self._sequences = [(rule, kept.get((rule.rule_id, rule.query))
                            or SequenceMatcher(rule.compiled, self._max_sequences))
                           for rule in rules if rule.compiled.is_sequence]
        self._has_rules = bool(self._single or self._sequences)

    def replace_rules(self, rules: list[LoadedRule]) -> None:
        """The Elastic rules from now on (a reload), between two events: no event is evaluated by half of each
        set. The built-in rules, the fold windows and unchanged sequence rules' state are kept."""
        self._set_rules(rules)
        self._counts["rule_reloads"] += 1

    def reload_refused(self) -> None:
        """A reload that failed: the rules in force stay (counted in rule_reloads_refused)."""
        self._counts["rule_reloads_refused"] += 1

    @property
    def rules(self) -> list[LoadedRule]:
        return [entry[0] for entry in self._single] + [rule for rule, _ in self._sequences]

    def look_ahead(self, found: tuple[int, int, int, int, int, int]) -> None:
        """An exec record still waiting in the ring buffer (sensor.probe.layout.peek_exec's tuple): the built-in
        rule holds what it may need while the process can still show it."""
        if self._builtin is not None:
            try:
                self._builtin.look_ahead(*found)
            except Exception as exc:  # an optimisation: its failure is counted, never a stop
                self._rule_error(self._builtin.metadata.name, exc)

    def inspect(self, doc: dict) -> tuple[list[dict], dict | None]:
        """Alert documents raised by this event, and what its document should say of the executed file's
        identity when the built-in rule could not decide it (None when there is nothing to say)."""
        self._identity_note = None
        alerts = self.evaluate(doc)
        return alerts, self._identity_note

    def evaluate(self, doc: dict) -> list[dict]:
        """Alert documents raised by this event (usually none)."""
        try:
            return self._evaluate(doc)
        except Exception as exc:  # one bad document must not stop the pipeline
            self._counts["detector_errors"] += 1
            if self._counts["detector_errors"] == 1:
                log.warning("detection failed on an event: %s: %s", type(exc).__name__, exc)
            return []

    def _evaluate(self, doc: dict) -> list[dict]:
        event = doc.get("event")
        if isinstance(event, dict) and event.get("kind") == "alert":
            self._counts["alerts_skipped"] += 1   # rules run on events, never on alerts (no alert loops)
            return []
        self._counts["events"] += 1
        out: list[dict] = []
        if self._builtin is not None:
            try:
                found = self._builtin.match(doc)
            except Exception as exc:
                self._rule_error(self._builtin.metadata.name, exc)
                found = None
            if found is not None:
                if found.recognition is not None:
                    out.extend(self._raise_builtin(doc, found))
                else:
                    self._identity_note = {"status": "unknown", "reason": found.unknown}
                    if found.unknown == UNKNOWN_ERROR and self._builtin.last_error is not None:
                        self._rule_error(self._builtin.metadata.name, self._builtin.last_error)
        if self._network is not None:
            try:
                connection = self._network.match(doc)
            except Exception as exc:
                self._rule_error(self._network.metadata.name, exc)
                connection = None
            if connection is not None:
                self._counts["builtin_network_matches"] += 1
                details = {"reason": connection.reason, "ssh_port": connection.port}
                if connection.program:
                    details["program"] = connection.program
                out.extend(self._raise(doc, self._network.metadata, details))
        if not self._has_rules:
            return out  # the built-in rule alone: no budget clock to read, no loops to enter, per document
        process = doc.get("process")
        name = process.get("name") if isinstance(process, dict) else None
        now = self._budget_clock
        deadline: float | None = self._start_budget()
        for index, (rule, predicate, names, folded) in enumerate(self._single):
            if names is not None:
                if name is None:
                    continue        # the rule's process.name test cannot hold
                if type(name) is str and (name.lower() if folded else name) not in names:
                    continue
            if now() > deadline:  # type: ignore[operator] - never None here: None returns at once
                deadline = self._budget_recheck()
                if deadline is None:
                    self._over_budget(len(self._single) - index + len(self._sequences))
                    return out
            try:
                hit = predicate(doc)
            except Exception as exc:
                self._rule_error(rule.name, exc)
                continue
            if hit:
                self._matched(rule)
                out.extend(self._raise(doc, rule.metadata, {"rule_file": rule.path.name}))
        for index, (rule, matcher) in enumerate(self._sequences):
            if now() > deadline:  # type: ignore[operator]
                deadline = self._budget_recheck()
                if deadline is None:
                    self._over_budget(len(self._sequences) - index)
                    return out
            try:
                matches = matcher.feed(doc)
            except Exception as exc:
                self._rule_error(rule.name, exc)
                continue
            for match in matches:
                self._matched(rule)
                out.extend(self._raise(doc, rule.metadata, self._sequence_details(rule, match)))
        return out

    def _raise_builtin(self, doc: dict, found: SshMatch, late: bool = False) -> list[dict]:
        assert self._builtin is not None and found.recognition is not None
        recognition = found.recognition
        self._counts["builtin_matches"] += 1
        implementation, role = program_kind(recognition.program, _argv0_name(doc))
        if self._network is not None:
            # its connections, whatever the port, are ssh's
            executable = (doc.get("container_sensor") or {}).get("executable") or {}
            self._network.remember((doc.get("process") or {}).get("entity_id"), recognition.program, role,
                                   (executable.get("device"), executable.get("inode")))
        details: dict = {"recognized_by": recognition.way, "program": recognition.program,
                         "implementation": implementation, "role": role}
        if recognition.target:
            details["symlink_target"] = recognition.target
        if recognition.evidence:
            details["evidence"] = recognition.evidence
        if late:
            details["identity_late"] = True   # the exec's own document went out saying "unknown: timeout"
        return self._raise(doc, self._builtin.metadata, details)

    @staticmethod
    def _sequence_details(rule: LoadedRule, match: SequenceMatch) -> dict:
        return {"rule_file": rule.path.name,
                "sequence": {"events": [{"id": s.event_id, "timestamp": s.timestamp} for s in match.steps],
                             "by": [list(v) if isinstance(v, tuple) else v for v in match.key]},
                "sequence_ids": ",".join(str(s.event_id) for s in match.steps)}

    def _matched(self, rule: LoadedRule) -> None:
        self._counts["rule_matches"] += 1
        self.rule_matches[rule.name] = self.rule_matches.get(rule.name, 0) + 1

    def _raise(self, doc: dict, metadata: RuleMetadata, details: dict) -> list[dict]:
        def make() -> dict:
            return build_alert(doc, metadata, details)

        alerts = self._folder.offer(fold_key(metadata.rule_id, doc), self._clock(), make)
        self._counts["alerts"] += len(alerts)
        if alerts:
            self.alerts_by_rule[metadata.name] = self.alerts_by_rule.get(metadata.name, 0) + len(alerts)
        return alerts

    def _start_budget(self) -> float:
        """The wall-clock time after which the budget may be spent (infinity without a budget)."""
        if self._budget_s is None or not (self._single or self._sequences):
            return math.inf
        self._cpu_start = self._budget_cpu()
        return self._budget_clock() + self._budget_s

    def _budget_recheck(self) -> float | None:
        """Past the wall-clock deadline, the thread's CPU time decides: time spent waiting for a CPU or the GIL
        (load on the host, which any container can create) must not switch rules off. Returns the next wall-clock
        deadline, or None when the budget is spent."""
        assert self._budget_s is not None
        left = self._budget_s - (self._budget_cpu() - self._cpu_start)
        return None if left <= 0 else self._budget_clock() + left

    def _over_budget(self, skipped: int) -> None:
        self._budget_counts["rule_budget_exceeded"] += 1
        self._budget_counts["rules_skipped_budget"] += skipped
        if self._budget_counts["rule_budget_exceeded"] == 1:
            log.warning("rule evaluation for one event went over its budget of %.0f ms of CPU time: the %d rules "
                        "left were skipped for it (counted in rule_budget_exceeded and rules_skipped_budget; "
                        "logged once)",
                        (self._budget_s or 0) * 1000, skipped)

    def _rule_error(self, name: str, exc: Exception) -> None:
        self._counts["rule_errors"] += 1
        seen = self.rule_errors.get(name, 0)
        self.rule_errors[name] = seen + 1
        if not seen:
            log.warning("rule %r failed on an event (counted, event kept): %s: %s",
                        name, type(exc).__name__, exc)

    def tick(self, now_s: float) -> list[dict]:
        """Summaries of folded alerts whose window has closed by `now_s` (same clock as `clock`)."""
        late: list[dict] = []
        try:
            if self._builtin is not None:
                for doc, found in self._builtin.late():
                    late.extend(self._raise_builtin(doc, found, late=True))
        except Exception as exc:
            self._counts["detector_errors"] += 1
            log.warning("late identity results failed: %s: %s", type(exc).__name__, exc)
        try:
            for _, matcher in self._sequences:
                matcher.expire_stale()
            summaries = self._folder.tick(now_s)
        except Exception as exc:
            self._counts["detector_errors"] += 1
            log.warning("alert folding failed: %s: %s", type(exc).__name__, exc)
            return late
        self._counts["alerts"] += len(summaries)
        return late + summaries

    def flush(self, wait_s: float = 1.0) -> list[dict]:
        """At shutdown: late alerts of identity looks still under way (waited for at most `wait_s`), then the
        summaries of every open fold window."""
        late: list[dict] = []
        if self._builtin is not None:
            self._builtin.wait_pending(wait_s)
            for doc, found in self._builtin.late():
                late.extend(self._raise_builtin(doc, found, late=True))
        summaries = self._folder.flush()
        self._counts["alerts"] += len(summaries)
        return late + summaries

    def stats(self) -> dict[str, int]:
        stats = dict(self._counts)
        stats.update(self._budget_counts)
        stats.update({
            "folded": self._folder.folded,
            "fold_summaries": self._folder.summaries,
            "fold_windows_closed_early": self._folder.windows_closed_early,
            "sequences_evicted": sum(m.evicted for _, m in self._sequences),
            "sequences_expired": sum(m.expired for _, m in self._sequences),
            "sequence_partials": sum(m.partials for _, m in self._sequences),
            "rules_loaded": len(self._single) + len(self._sequences),
        })
        stats.update(self._identity.counts)
        worker = self._identity_worker.stats()
        stats.update({"identity_timeouts": worker["timeouts"], "identity_deferred": worker["deferred"],
                      "identity_refused": worker["refused"], "identity_looks_queued": worker["queued_now"],
                      "identity_workers": worker["threads"], "identity_workers_stuck": worker["stuck_now"]})
        if self._network is not None:
            stats.update(self._network.sizes)
        if self._root_pins is not None:
            stats.update(self._root_pins.counts)
            stats["root_pins"] = self._root_pins.pinned
        if self._builtin is not None:
            stats.update(self._builtin.counts)
            for reason, count in self._builtin.unknown_by_reason.items():
                stats[f"identity_unknown_{reason}"] = count
        return stats


def _argv0_name(doc: dict) -> str | None:
    """The name a process was run under (argv[0]'s last component): what a multi-call binary dispatches on."""
    process = doc.get("process")
    args = process.get("args") if isinstance(process, dict) else None
    if isinstance(args, list) and args and isinstance(args[0], str):
        return args[0].rsplit("/", 1)[-1]
    return None
