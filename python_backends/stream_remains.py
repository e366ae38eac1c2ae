"""What a finished decoupled BLS stream leaves behind, kept alive in Python until the stub has cleaned it up.

Why: in Triton 2.51's python backend (the stub in nvidia-pytriton 0.7.0), a decoupled BLS stream's iterator keeps
every response it returned. When the stream ends, the stub queues a clean-up message; its stub-to-server thread,
which does not hold the GIL, then drops the stub's own reference to the iterator. If that is the last one, the
responses and their numpy arrays are freed on that thread while Python threads run: the stub's heap is corrupted
and the stub dies (SIGSEGV in pymalloc, or glibc's "malloc(): unaligned fastbin chunk detected"). Upstream fixed it
by taking the GIL in the tensor's destructor (triton-inference-server/python_backend#390, after 2.51).
`tests/integration/test_bls_stream_lifetime.py` killed the stub in its first 50 streams without this.

How: the stream's pump parks the iterator and every response once the stream has ended (its clean-up message is
queued by then). That thread handles the stub's messages in order, and an open request's `is_cancelled()` is
answered through it, so once an `is_cancelled()` asked after parking has come back, the clean-up is done and the
parked objects hold the last references: `settle` frees them on the calling Python thread, under the GIL. A
request already found cancelled answers from the stub's cache, with no round trip; what it parked waits for the
next settle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class StreamRemains:
    """The parked remains of this stub process's finished BLS streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued = 0
        self._parked: dict[int, list[Any]] = {}

    def park(self, remains: list[Any]) -> None:
        """Keep a stream's iterator and responses; call once the stream has ended."""
        with self._lock:
            self._issued += 1
            self._parked[self._issued] = remains

    def settle(self, is_cancelled: Callable[[], bool]) -> int:
        """Free the remains parked before this call once a round trip through the stub's message thread shows their
        clean-up is done; how many streams' remains were freed. `is_cancelled` must be a request still open (its
        final response not sent: the server forgets a request once it has that)."""
        with self._lock:
            last = self._issued
        # The first answer may be one asked by another thread before the remains were parked; the second is asked
        # after the first came back, so its message was queued after their clean-up.
        is_cancelled()
        if is_cancelled():
            return 0  # answered from the cache without a round trip: a later settle frees them
        with self._lock:
            freed = [self._parked.pop(ticket) for ticket in [t for t in self._parked if t <= last]]
        return len(freed)  # the last references go with `freed`, here

    def __len__(self) -> int:
        with self._lock:
            return len(self._parked)


# One per stub process: every decoupled BLS stream of the process goes through its single message thread.
STREAM_REMAINS = StreamRemains()
