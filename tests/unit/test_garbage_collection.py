"""The event loop's collector policy: long-lived objects frozen before a young collection would walk them."""

from __future__ import annotations

import gc
import time

from sensor.run import GarbageCollection


def test_objects_piling_up_are_frozen_and_a_full_collection_comes_on_schedule() -> None:
    collector = GarbageCollection()
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)  # as the sensor runs (settle_garbage_collector)

    def count_collected(phase: str, info: dict) -> None:
        if phase == "stop":
            collected.append(info["collected"])

    collected: list[int] = []
    try:
        gc.collect()
        frozen_before = gc.get_freeze_count()
        kept = [[i] for i in range(GarbageCollection.FREEZE_AT + 100)]  # long-lived, tracked, acyclic
        assert gc.get_count()[0] >= GarbageCollection.FREEZE_AT
        collector.after_poll(time.monotonic())
        assert collector.freezes == 1
        assert gc.get_count()[0] < GarbageCollection.FREEZE_AT
        assert gc.get_freeze_count() >= frozen_before + len(kept)

        # cyclic garbage that got frozen is freed by the scheduled full collection
        cycle: list = []
        cycle.append(cycle)
        gc.freeze()
        del cycle
        gc.callbacks.append(count_collected)
        collector.after_poll(time.monotonic() + GarbageCollection.FULL_EVERY_S + 1)
        assert collector.full_collections == 1
        assert sum(collected) >= 1
    finally:
        if count_collected in gc.callbacks:
            gc.callbacks.remove(count_collected)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
