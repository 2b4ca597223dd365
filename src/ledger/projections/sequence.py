"""The sequence feed: a projector kept up to date from its application's sequence.

Reads the application sequence (``DYNAMODB_ORDERING=sequence``) after the
view's tracking position, a page at a time, and applies each page in full
commits (:meth:`Projector.apply_batch`). Unlike ``eventsourcing``'s
``ProjectionRunner``, which decodes each event before the projector sees it
and so stops at one it cannot decode, this feed parks such an event (its
aggregate waits, the others go on).

A notification batch item that cannot be read stops the feed at that
position, since the sequence is a total order and nothing may be skipped
silently: :attr:`SequenceFeed.blocked` says where, and an operator goes past
it with :meth:`SequenceFeed.skip_batch` (``ledger projections skip-batch``),
which applies the batch's events from the events table instead.

After each page it applied, the feed reads the sequence's head (one
strongly consistent GetItem, 1 RCU) and logs and records its lag
(:mod:`ledger.projections.metrics`).

The sequence is a total order, so a view that keeps one position
(:meth:`~ledger.projections.views.ReadModelView.keeps_one_position`: a new
view, or a version rebuilt from the sequence) keeps only its tracking
position: per page, one GetItem of the position, one Query of the dead
letters, the page's Query, the reads its handlers make, and per commit one
BatchGetItem of the items written unread and one TransactWriteItems.
"""

from __future__ import annotations

import logging
from typing import Any

from eventsourcing.persistence import Tracking

from ledger.dynamodb.batches import CorruptNotificationBatchError
from ledger.projections.history import DEFAULT_PAGE_SIZE, decode
from ledger.projections.metrics import report_lag
from ledger.projections.projector import Projector
from ledger.projections.session import Session
from ledger.projections.views import ActiveVersionChangedError, ConcurrentChangeError

logger = logging.getLogger(__name__)


class SequenceFeed:
    """Applies an application's sequence to a projector, a page per :meth:`poll`.

    Exactly once: each commit carries the tracking position of its last
    event. Run it with :func:`ledger.projections.streams.run_polls`, which
    rides out DynamoDB being unavailable.
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
        self.blocked: CorruptNotificationBatchError | None = None
        """The unreadable batch this feed is stopped at, if it is."""

    @property
    def position(self) -> int:
        """The last position the projector's view has applied (0: none)."""
        return self.projector.view.max_tracking_id(self.application.name) or 0

    def poll(self) -> int:
        """Apply the next page of the sequence; return how many events it applied.

        Returns 0 while stopped at an unreadable batch (logged once, and kept
        in :attr:`blocked`) until an operator skips it.
        """
        app = self.application
        start = self.position + 1
        try:
            notifications = app.recorder.select_notifications(
                start=start, limit=self.page_size
            )
        except CorruptNotificationBatchError as error:
            if self.blocked is None or self.blocked.last_position != (
                error.last_position
            ):
                logger.error(  # noqa: TRY400 - the message says it all; no trace
                    "Sequence feed stopped at an unreadable notification batch",
                    extra={
                        "projection": self.projector.name,
                        "position": start,
                        "batch_last_position": error.last_position,
                        "reason": error.reason,
                    },
                )
            self.blocked = error
            return 0
        self.blocked = None
        events = [
            (decode(app.mapper, n), Tracking(app.name, n.id)) for n in notifications
        ]
        try:
            applied = self._apply(events)
            if applied:
                head = app.recorder.max_notification_id() or 0
                report_lag(self.projector, logger, events[-1][1].notification_id, head)
        finally:
            self.projector.metrics.flush()
        return applied

    def skip_batch(self, position: int) -> int:
        """Go past the unreadable batch holding ``position``; return events applied.

        ``position`` must be the next one this projection would read (its
        position + 1), so an operator names the batch they mean to skip. The
        batch's events are read from the events table instead (a Scan of the
        whole table: its read units are the table's size) and applied, and
        the tracking position moves to the batch's last position. Refuses a
        batch that can be read: skipping one is never needed.
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
            applied = self.projector.apply_batch(self._session(), events)
        else:
            session = self._session()
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
        self.blocked = None
        return applied

    def _session(self) -> Session:
        """Return a session for the next events, in total order if the view allows."""
        view = self.projector.view
        return Session(view, total_order=view.keeps_one_position(self.application.name))

    def _apply(self, events: list[tuple[Any, Tracking]]) -> int:
        view = self.projector.view
        try:
            return self.projector.apply_batch(self._session(), events)
        except ActiveVersionChangedError:
            view.follow_active()  # a rebuild switched: go on from its position
        except ConcurrentChangeError:
            pass  # another writer got in first: read again from the position
        return 0
