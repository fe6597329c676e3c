"""The contract every output keeps."""

from __future__ import annotations

from typing import Any, Protocol


class Output(Protocol):
    """A sink for finished ECS documents (events and alerts).

    `write` is called on the event loop's thread for every document and must never block on a network or a
    slow disk: an output that ships elsewhere queues and works on a thread of its own. Nothing is dropped
    without being counted in `stats()`.
    """

    name: str

    def write(self, doc: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self, timeout: float = 10.0) -> None: ...

    def healthy(self) -> bool: ...

    def stats(self) -> dict[str, int]: ...
