"""The application sequence as a source, in either ordering that keeps one.

That is the index of an ``indexed`` application, or the sequence a
``sequence`` application's saves write.

Both are total orders without gaps, committed with their head item in one
transaction, so every position up to the head is readable once the head
says so. A page still does not say where it ends: the recorder returns a
short page when a topic filter left out the events after its last one, and
also when the batch item after it cannot be read (the read that starts
there raises). So a batch's checkpoint is its last event's position, and
only an empty page (nothing of the topics up to the head) reaches the head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from ledger.feeds.base import Batch, Item
from ledger.projections.history import decode

DEFAULT_PAGE_SIZE: Final = 1000
"""Positions asked for per ``select_notifications`` call."""


class IndexSource:
    """An application's sequence, a page at a time, the next page read ahead.

    Each :meth:`batches` call reads the head once (one strongly consistent
    GetItem), then pages up to that head with ``select_notifications``
    (filtered on ``topics`` by the recorder), reading the next page in a
    thread while the consumer handles the current one. An unreadable batch
    item raises :class:`~ledger.dynamodb.batches.CorruptNotificationBatchError`
    when a read starts at it, after the batch before it was yielded; a page
    that ends short of the head is followed by a read from its end, so
    nothing after it is passed over.
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

        with ThreadPoolExecutor(max_workers=1) as reader:
            upcoming = reader.submit(read, after + 1)
            while True:
                page = upcoming.result()
                checkpoint = int(page[-1].id) if page else head
                if checkpoint < head:
                    upcoming = reader.submit(read, checkpoint + 1)
                yield Batch(
                    [Item(notification, to_event) for notification in page],
                    checkpoint,
                    head,
                )
                if checkpoint >= head:
                    return
