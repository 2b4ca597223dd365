"""The sequence feed: a projector kept up to date from its application's sequence.

A projector is one consumer of the reader interface (:mod:`ledger.feeds`):
:class:`ProjectorConsumer`, run by a :class:`~ledger.feeds.Runner` over an
:class:`~ledger.feeds.IndexSource`. It reads the application sequence
(``DYNAMODB_ORDERING=sequence``, or the index of an ``indexed`` application)
after the view's tracking position, a page at a time (the next page read
while one is applied), and applies each page in full commits
(:meth:`Projector.apply_batch`). Unlike ``eventsourcing``'s
``ProjectionRunner``, which decodes each event before the projector sees it
and so stops at one it cannot decode, this feed parks such an event (its
aggregate waits, the others go on).

A notification batch item that cannot be read stops the feed at that
position, since the sequence is a total order and nothing may be skipped
silently: :attr:`SequenceFeed.blocked` says where, and an operator goes past
it with :meth:`SequenceFeed.skip_batch` (``ledger projections skip-batch``),
which applies the batch's events from the events table instead.

Each poll reads the sequence's head once (one strongly consistent GetItem,
1 RCU); after each page it applied, the runner logs and records the
projection's lag behind that head (metric ``Lag``).

The sequence is a total order, so a view that keeps one position
(:meth:`~ledger.projections.views.ReadModelView.keeps_one_position`: a new
view, or a version rebuilt from the sequence) keeps only its tracking
position: one GetItem of the position when the runner starts (and after a
race or a stop at an unreadable batch); per page, one Query of
the dead letters, the page's Query, the reads its handlers make, and per commit one
BatchGetItem of the items written unread and one TransactWriteItems.
"""

from __future__ import annotations

import logging
from typing import Any

from eventsourcing.persistence import Tracking

from ledger.dynamodb.batches import CorruptNotificationBatchError
from ledger.dynamodb.recorders import TrackingAfter
from ledger.feeds import Batch, IndexSource, Progress, Raced, Runner
from ledger.projections.history import DEFAULT_PAGE_SIZE, decode
from ledger.projections.projector import Projector
from ledger.projections.session import Session
from ledger.projections.views import ActiveVersionChangedError, ConcurrentChangeError

logger = logging.getLogger(__name__)


class ViewCheckpoint:
    """A projection's position: the tracking item in its view's table."""

    def __init__(self, projector: Projector, application_name: str) -> None:
        """Keep ``projector``'s position in ``application_name``'s sequence."""
        self.projector = projector
        self.application_name = application_name

    def load(self) -> int:
        """Return the last position the view applied (0: none)."""
        return int(self.projector.view.max_tracking_id(self.application_name) or 0)

    def save(self, position: int, expected: int) -> bool:
        """Move the position alone, with no read-model write; False if raced."""
        del expected  # the view's tracking condition is "only forward"
        session = session_for(self.projector, self.application_name)
        session.tracking = Tracking(self.application_name, position)
        try:
            self.projector.commit(session)
        except ConcurrentChangeError:
            return False
        return True


class ProjectorConsumer:
    """A projector as a consumer of its application's sequence.

    Atomic: each commit holds the read-model writes and the tracking
    position of its last event (:meth:`Projector.apply_batch`). Events that
    cannot be decoded, and events whose handler keeps failing, are parked;
    their aggregate's later events wait (the projector's rules).
    """

    atomic = True
    topics: tuple[str, ...] = ()

    def __init__(self, projector: Projector, application_name: str) -> None:
        """Apply ``application_name``'s sequence to ``projector``."""
        self.projector = projector
        self.application_name = application_name
        self.name = projector.name
        self.metrics = projector.metrics
        self.checkpoint = ViewCheckpoint(projector, application_name)

    def process(self, batch: Batch) -> Progress:
        """Apply a page in as few commits as fit; raise ``Raced`` if refused."""
        name = self.application_name
        # Each commit lands only over the position its first event follows:
        # never over part of the page another runner committed.
        events: list[tuple[Any, Tracking]] = []
        after = batch.after
        for item in batch.items:
            events.append((item.event, TrackingAfter(name, item.position, after)))
            after = item.position
        try:
            applied = self.projector.apply_batch(
                session_for(self.projector, name), events
            )
        except ActiveVersionChangedError:
            self.projector.view.follow_active()  # a rebuild switched: go on from it
            raise Raced from None
        except ConcurrentChangeError:
            raise Raced from None  # another writer got in first
        return Progress(applied, batch.checkpoint)


def session_for(projector: Projector, application_name: str) -> Session:
    """Return a session for the next events, in total order if the view allows."""
    view = projector.view
    return Session(view, total_order=view.keeps_one_position(application_name))


class SequenceFeed:
    """Applies an application's sequence to a projector (a runner and its consumer).

    Exactly once: each commit carries the tracking position of its last
    event. :meth:`poll` goes to the sequence's end as of the poll; run it
    with :meth:`run`, which rides out DynamoDB being unavailable.
    """

    def __init__(
        self,
        projector: Projector,
        application: Any,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        """Feed ``projector`` from ``application``'s sequence, ``page_size`` at once."""
        self.projector = projector
        self.application = application
        self.page_size = page_size
        self.consumer = ProjectorConsumer(projector, application.name)
        self.runner = Runner(
            IndexSource(application, page_size=page_size), self.consumer
        )

    @property
    def blocked(self) -> CorruptNotificationBatchError | None:
        """The unreadable batch this feed is stopped at, if it is."""
        return self.runner.blocked

    @property
    def position(self) -> int:
        """The last position the projector's view has applied (0: none)."""
        return self.consumer.checkpoint.load()

    def poll(self) -> int:
        """Apply the sequence up to its end as of now; return the events applied.

        Stops at an unreadable batch (logged once, and kept in
        :attr:`blocked`) until an operator skips it.
        """
        return self.runner.poll()

    def run(self, stop: Any, interval: float = 1.0) -> None:
        """Poll until ``stop`` (a ``threading.Event``) is set; ride out outages."""
        self.runner.interval = interval
        self.runner.run(stop)

    def skip_batch(self, position: int) -> int:
        """Go past the unreadable batch holding ``position``; return events applied.

        ``position`` must be the next one this projection would read (its
        position + 1), so an operator names the batch they mean to skip. The
        batch's events are read from the events table instead (a Scan of the
        whole table: its read units are the table's size; on an indexed
        application, a read of the whole index too, and a wait for its
        indexer to index what was saved before the Scan, see
        ``DynamoDBIndexedApplicationRecorder.notifications_from_events``) and
        applied, and the tracking position moves to the batch's last
        position. A skip cut short after some of its commits (a batch of
        more events than one commit holds) is finished by skipping again
        from the position it reached + 1, on the sequence ordering (each
        event item holds its position); on the indexed ordering it is
        refused, since which of the batch's events were applied cannot be
        known (rebuild the projection instead). Refuses a batch that can be
        read: skipping one is never needed.
        """
        app = self.application
        expected = self.position + 1
        if position != expected:
            raise ValueError(
                f"Projection {self.projector.name!r} is at position {expected - 1}: "
                f"the batch it would read next holds position {expected}, not "
                f"{position}. Give --position {expected}."
            )
        recorder = app.recorder
        last = recorder.batch_end(position)
        if last is None:
            raise ValueError(
                f"No batch holds position {position} of {app.name!r}: "
                "the projection is up to date."
            )
        try:
            recorder.select_notifications(start=position, limit=last - position + 1)
        except CorruptNotificationBatchError:
            pass
        else:
            raise ValueError(
                f"The batch holding positions {position} to {last} can be read: "
                "nothing to skip. Run the projection to apply it."
            )
        notifications = recorder.notifications_from_events(position, last)
        events = [
            (decode(app.mapper, n), Tracking(app.name, n.id)) for n in notifications
        ]
        if events:
            # The batch's last position is recorded with its last event found.
            events[-1] = (events[-1][0], Tracking(app.name, last))
            applied = self.projector.apply_batch(
                session_for(self.projector, app.name), events
            )
        else:
            session = session_for(self.projector, app.name)
            session.tracking = Tracking(app.name, last)
            self.projector.commit(session)
            applied = 0
        self.projector.metrics.flush()
        logger.warning(
            "Skipped an unreadable notification batch; applied its events "
            "from the events table",
            extra={
                "projection": self.projector.name,
                "first_position": position,
                "last_position": last,
                "events": applied,
            },
        )
        self.runner.reload()
        return applied
