"""The application sequence as a source, in either ordering that keeps one.

That is the index of an ``indexed`` application, or the sequence a
``sequence`` application's saves write.

Both are total orders without gaps, committed with their head item in one
transaction, so every position up to the head is readable once the head
says so. ``select_notifications`` returns a page that ends early when a
damaged batch item follows it, and raises when the first position it reads
is in one; so a batch's checkpoint is its last event's position, and only
an empty page (nothing of the consumer's topics up to the head) moves the
checkpoint on to the head.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

from ledger.feeds.base import Batch, Item
from ledger.projections.history import decode

DEFAULT_PAGE_SIZE: Final = 1000
"""Positions asked for per ``select_notifications`` call."""


class IndexSource:
    """An application's sequence, a page at a time, read ahead for slow consumers.

    Each :meth:`batches` call reads the head once (one strongly consistent
    GetItem), then pages up to that head with ``select_notifications``
    (filtered on ``topics`` by the recorder). Once the consumer has taken
    longer over a page than that page took to read, the next page is read
    in a thread while the consumer handles the current one. Until then,
    pages are read in the consumer's own thread: for a consumer that keeps
    up, a thread gains nothing and its hand-off costs CPU per event
    (``benchmarks/bench_indexed.py --readers-only``). An unreadable batch
    item raises
    :class:`~ledger.dynamodb.batches.CorruptNotificationBatchError` when the
    page reaches it.
    """

    def __init__(self, application: Any, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        """Read ``application``'s sequence, ``page_size`` positions per request."""
        self.application = application
        self.name: str = application.name
        self.page_size = page_size

    def head(self) -> int:
        """Return the sequence's last position (0: empty)."""
        return int(self.application.recorder.max_notification_id() or 0)

    def batches(self, after: int, topics: Sequence[str] = ()) -> Iterator[Batch]:
        """Yield pages after ``after`` up to the head as of this call."""
        head = self.head()
        if head <= after:
            return
        recorder = self.application.recorder
        mapper = self.application.mapper

        def to_event(notification: Any) -> Any:
            return decode(mapper, notification)

        def read(start: int) -> Sequence[Any]:
            page: Sequence[Any] = recorder.select_notifications(
                start=start, limit=self.page_size, stop=head, topics=topics
            )
            return page

        reader: ThreadPoolExecutor | None = None
        upcoming: Future[Sequence[Any]] | None = None
        try:
            while True:
                if upcoming is None:
                    began = time.perf_counter()
                    page = read(after + 1)
                    reading = time.perf_counter() - began
                else:
                    page = upcoming.result()
                if not page:
                    # Nothing (of these topics) up to the head: had a damaged
                    # batch been in the way, the read would have raised.
                    yield Batch([], after, head, head)
                    return
                checkpoint = int(page[-1].id)
                # A page may end early, before a damaged batch: only an empty
                # page says the rest up to the head holds nothing.
                more = checkpoint < head
                upcoming = (
                    reader.submit(read, checkpoint + 1) if reader and more else None
                )
                handed = time.perf_counter()
                yield Batch(
                    [Item(notification, to_event) for notification in page],
                    after,
                    checkpoint,
                    head,
                )
                if not more:
                    return
                if reader is None and time.perf_counter() - handed > reading:
                    # The consumer is the slower: read ahead from now on.
                    reader = ThreadPoolExecutor(max_workers=1)
                after = checkpoint
        finally:
            if reader is not None:
                reader.shutdown(wait=True)
