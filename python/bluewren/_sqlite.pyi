"""Type stubs for the Cython module ``bluewren._sqlite`` (native/cython/_sqlite.pyx)."""

from typing import Any, Self

from typing_extensions import disjoint_base

@disjoint_base
class Appender:
    def __new__(cls, path: str, synchronous: str, busy_timeout_ms: int) -> Self: ...
    def close(self) -> None: ...
    @staticmethod
    def soft_heap_limit() -> int: ...
    def append(
        self, messages: list[Any], counts: dict[int, int], now: float
    ) -> list[int] | None: ...
