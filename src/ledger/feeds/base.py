"""The parts of a feed: what a source hands over, and what a consumer answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol


class Raced(Exception):  # noqa: N818 - a signal between consumer and runner
    """Another runner, a redrive or a rebuild got in first: read the checkpoint again.

    A consumer raises it from :meth:`Consumer.process` when its commit was
    refused because what it read had changed. What the consumer committed
    before it stays committed (its checkpoint says how far); the runner
    forgets the position it held and loads the checkpoint at its next poll.
    """


@dataclass(frozen=True, eq=False)
class Item:
    """One event as a source hands it over: its notification, decoded on demand."""

    notification: Any
    """The eventsourcing ``Notification`` (``id`` is its position)."""
    to_event: Callable[[Any], Any] = field(repr=False)
    """Makes the domain event from the notification (or an ``Undecodable``)."""

    @property
    def position(self) -> int:
        """The event's position in the source's total order."""
        return int(self.notification.id)

    @property
    def topic(self) -> str:
        """The event's topic, read without decoding it."""
        return str(self.notification.topic)

    @cached_property
    def event(self) -> Any:
        """The domain event, or a :class:`~ledger.projections.history.Undecodable`."""
        return self.to_event(self.notification)


@dataclass(frozen=True)
class Batch:
    """Events in position order, and where the source stands after them."""

    items: Sequence[Item]
    after: int
    """The position the batch follows: its consumer's position before it."""
    checkpoint: int
    """The position past the batch's end: its last event's, or further when
    the positions after it held only events of other topics."""
    head: int
    """The source's last position when the batch was read (for lag)."""


@dataclass(frozen=True)
class Progress:
    """How far a consumer got with a batch."""

    applied: int
    """Events it handled (applied, sent, decided)."""
    position: int
    """Where its checkpoint now stands: the batch's checkpoint when it handled
    the whole batch; before it when it stopped short. Stopping short says
    something failed: the runner ends the poll, and its ``run`` and ``drain``
    wait (doubling, as for an outage) and hand over the rest again; a
    ``drain`` whose deadline or patience runs out first raises
    :class:`~ledger.feeds.StoppedShortError`. A consumer that only wants to
    do less per batch should ask for smaller batches instead."""


class Source(Protocol):
    """Where events come from, a batch at a time, after a position."""

    name: str
    """The application the events are of (the checkpoint's key)."""

    def batches(self, after: int, topics: Sequence[str] = ()) -> Iterator[Batch]:
        """Yield the batches after ``after``, to the tail as of the call."""
        ...  # pragma: no cover


class Checkpoint(Protocol):
    """A consumer's one position in a source."""

    def load(self) -> int:
        """Return the position committed last (0: none)."""
        ...  # pragma: no cover

    def save(self, position: int, expected: int) -> bool:
        """Move the position from ``expected`` to ``position``; False if raced.

        Used by the runner for consumers that are not atomic; an atomic
        consumer commits the position with its effects instead.
        """
        ...  # pragma: no cover


class Consumer(Protocol):
    """What a feed does with events: a class, run by :class:`~ledger.feeds.Runner`.

    Its attributes are read only by the runner (plain attributes do).
    """

    @property
    def name(self) -> str:
        """For logs and metrics (the dimension's value)."""
        ...  # pragma: no cover

    @property
    def topics(self) -> Sequence[str]:
        """The topics it reads (empty: all); the source filters on them."""
        ...  # pragma: no cover

    @property
    def atomic(self) -> bool:
        """True if :meth:`process` commits the checkpoint with its effects."""
        ...  # pragma: no cover

    @property
    def checkpoint(self) -> Checkpoint:
        """Where it keeps its position."""
        ...  # pragma: no cover

    def process(self, batch: Batch) -> Progress:
        """Handle a batch and (if atomic) commit its checkpoint; say how far it got.

        Raises :class:`Raced` when another writer got in first.
        """
        ...  # pragma: no cover
