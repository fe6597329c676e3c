"""Streaming state for one EQL `sequence` rule, with a cap on partial sequences.

Like Elasticsearch's sequence matcher, each stage keeps at most one partial sequence per join key (a newer
start replaces an older one), an event is tried against the stages from last to first so it cannot advance the
same sequence twice, `maxspan` is measured from the first event's @timestamp, and an `until` event closes every
partial sequence of its key. Partials only keep the ids and times of their events, not the documents.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sensor.rules.eql_compile import CompiledQuery, Stage


@dataclass(frozen=True)
class SequenceStep:
    event_id: str | None
    timestamp: str | None


@dataclass
class _Partial:
    start_s: float
    steps: tuple[SequenceStep, ...]


def event_time_s(doc: dict) -> float:
    """Seconds since the epoch from the document's @timestamp, or now when it has none."""
    stamp = doc.get("@timestamp")
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    elif isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return stamp / 1000.0
    return time.time()


def _hashable(value: Any) -> Any:
    if type(value) is list:
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _key(stage: Stage, doc: dict) -> tuple:
    return tuple(_hashable(get(doc)) for get in stage.keys)


def _step(doc: dict) -> SequenceStep:
    event = doc.get("event")
    event_id = event.get("id") if isinstance(event, dict) else None
    return SequenceStep(event_id, doc.get("@timestamp"))


@dataclass(frozen=True)
class SequenceMatch:
    steps: tuple[SequenceStep, ...]
    key: tuple


class SequenceMatcher:
    def __init__(self, query: CompiledQuery, max_partials: int) -> None:
        if not query.is_sequence:
            raise ValueError("not a sequence query")
        self._stages = query.stages
        self._until = query.until
        self._maxspan_s = query.maxspan_s
        self._max_partials = max(1, max_partials)
        self._pending: list[OrderedDict[tuple, _Partial]] = [OrderedDict() for _ in self._stages[:-1]]
        self.evicted = 0
        self.expired = 0
        self.latest_s: float | None = None
        self._expired_at = float("-inf")

    @property
    def partials(self) -> int:
        return sum(len(stage) for stage in self._pending)

    def feed(self, doc: dict) -> list[SequenceMatch]:
        """Advance the state with one event; return the sequences it completes."""
        stages = self._stages
        matching = [j for j, stage in enumerate(stages) if stage.predicate(doc)]
        closes = self._until is not None and self._until.predicate(doc)
        if not matching and not closes:
            return []
        now_s = event_time_s(doc)
        if self.latest_s is None or now_s > self.latest_s:
            self.latest_s = now_s
        if closes:
            key = _key(self._until, doc)
            for pending in self._pending:
                pending.pop(key, None)
        completed: list[SequenceMatch] = []
        last = len(stages) - 1
        for j in reversed(matching):
            key = _key(stages[j], doc)
            if j == 0:
                if last == 0:
                    completed.append(SequenceMatch((_step(doc),), key))
                else:
                    self._store(0, key, _Partial(now_s, (_step(doc),)))
                continue
            partial = self._pending[j - 1].pop(key, None)
            if partial is None:
                continue
            if self._maxspan_s is not None and now_s - partial.start_s > self._maxspan_s:
                self.expired += 1
                continue
            steps = (*partial.steps, _step(doc))
            if j == last:
                completed.append(SequenceMatch(steps, key))
            else:
                self._store(j, key, _Partial(partial.start_s, steps))
        return completed

    def expire_stale(self) -> None:
        """Drop partials that can no longer complete: older than maxspan before the latest event seen.
        Runs at most once per second of event time (it walks every partial)."""
        if self.latest_s is None or self.latest_s - self._expired_at < 1.0:
            return
        self._expired_at = self.latest_s
        self.expire(self.latest_s)

    def expire(self, now_s: float) -> None:
        """Drop partials older than maxspan relative to now_s (event time)."""
        if self._maxspan_s is None:
            return
        horizon = now_s - self._maxspan_s
        for pending in self._pending:
            stale = [key for key, partial in pending.items() if partial.start_s < horizon]
            for key in stale:
                del pending[key]
            self.expired += len(stale)

    def _store(self, stage: int, key: tuple, partial: _Partial) -> None:
        pending = self._pending[stage]
        pending.pop(key, None)
        pending[key] = partial
        while self.partials > self._max_partials:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        oldest_stage = None
        oldest_start = None
        for index, pending in enumerate(self._pending):
            if pending:
                head = next(iter(pending.values()))
                if oldest_start is None or head.start_s < oldest_start:
                    oldest_stage, oldest_start = index, head.start_s
        if oldest_stage is None:
            return
        self._pending[oldest_stage].popitem(last=False)
        self.evicted += 1
