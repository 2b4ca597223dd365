"""The one loop every feed runs: poll, run, drain, and wait for a position."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from ledger.dynamodb.batches import CorruptNotificationBatchError
from ledger.feeds.base import Batch, Consumer, Progress, Raced, Source
from ledger.feeds.polling import Polling, StoppedShortError, deadline_of
from ledger.projections.metrics import COUNT, LAG, NO_METRICS, Metrics

logger = logging.getLogger(__name__)

STOP_MARGIN_MS: Final = 10_000
"""Time left in a Lambda invocation at which :func:`drain_handler` starts no
more batches: the one being handled must end before Lambda's timeout."""


class Runner(Polling):
    """Runs a consumer over a source: the only loop a feed needs.

    Each :meth:`poll` goes from the consumer's position to the source's tail
    as of the poll: it hands each batch to the consumer, saves the
    checkpoint after the effects when the consumer is not atomic, and
    records the consumer's lag behind the source's head (metric ``Lag``, the
    consumer's name as the dimension's value). It stops early when the
    consumer stops short (something not done: the next poll goes on from
    there; in :meth:`run` and :meth:`drain` the poll raises
    :class:`~ledger.feeds.StoppedShortError`, so they wait, doubling, and
    read again rather than take it for caught up), when the consumer
    :class:`Raced` (the next poll loads the checkpoint again), or at a batch
    it cannot read (:attr:`blocked`; nothing may be skipped silently in a
    total order).

    A consumer with a ``tick(now) -> int`` method has it called at the end of
    every poll, for work that comes due with time rather than with events
    (timeouts); what it returns counts as events handled.

    One runner per consumer is the rule; a second one is safe (each position
    is committed once) but reads every page twice. It runs, drains, starts
    and stops as every feed that polls does (:class:`~ledger.feeds.Polling`).
    """

    def __init__(
        self,
        source: Source,
        consumer: Consumer,
        *,
        metrics: Metrics | None = None,
        interval: float = 1.0,
    ) -> None:
        """Run ``consumer`` over ``source``, waiting ``interval`` when idle."""
        super().__init__(interval=interval)
        self.source = source
        self.consumer = consumer
        self.metrics: Metrics = (
            metrics if metrics is not None else getattr(consumer, "metrics", NO_METRICS)
        )
        self.blocked: CorruptNotificationBatchError | None = None
        """The unreadable batch this runner is stopped at, if it is."""
        self.lag: int | None = None
        """Positions between the consumer's position and the head, at the last batch."""
        self._position: int | None = None
        self._short: tuple[int, int] | None = None
        """Where the last poll's consumer stopped short, and its batch's end."""

    @property
    def name(self) -> str:
        """The consumer's name."""
        return self.consumer.name

    @property
    def position(self) -> int:
        """The consumer's position as this runner last knew it (loaded if unknown)."""
        if self._position is None:
            self._position = self.consumer.checkpoint.load()
        return self._position

    def reload(self) -> None:
        """Forget the position and the stop: the next poll loads the checkpoint.

        For after something else moved the checkpoint (an operator skipping
        a batch, a redrive).
        """
        self._position = None
        self.blocked = None

    def poll(
        self, deadline: float | None = None, *, now: datetime | None = None
    ) -> int:
        """Go to the tail once; return the events handled.

        Starts no batch after ``deadline`` (``time.monotonic()``), if given.
        ``now`` is the time handed to the consumer's ``tick`` (default: the
        clock's), for a caller that decides what is due.
        """
        after = self.position
        handled = 0
        self._short = None
        try:
            for batch in self.source.batches(after, self.consumer.topics):
                progress = self._process(batch, after)
                if progress is None:
                    break
                handled += progress.applied
                after = progress.position
                if progress.position < batch.checkpoint:
                    self._short = (progress.position, batch.checkpoint)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except CorruptNotificationBatchError as error:
            self._note_blocked(error, after)
        else:
            self.blocked = None
        finally:
            self.metrics.flush()
        tick = getattr(self.consumer, "tick", None)
        if tick is not None:
            # Time-driven work (timeouts coming due), after the events read.
            handled += int(tick(now or datetime.now(UTC)))
        with self._polled:
            self._polled.notify_all()
        return handled

    def _process(self, batch: Batch, after: int) -> Progress | None:
        consumer = self.consumer
        try:
            progress = consumer.process(batch)
            saved = (
                consumer.atomic
                or progress.position <= after
                or consumer.checkpoint.save(progress.position, after)
            )
        except Raced:
            saved = False
        if not saved:
            logger.info(
                "%s: another runner got in first; reading from the checkpoint again",
                consumer.name,
                extra={"consumer": consumer.name, "position": after},
            )
            self._position = None
            return None
        self._position = progress.position
        self.lag = max(0, batch.head - progress.position)
        self.metrics.record(LAG, self.lag, COUNT, consumer.name)
        logger.debug(
            "%s handled up to %d of %d",
            consumer.name,
            progress.position,
            batch.head,
            extra={
                "consumer": consumer.name,
                "position": progress.position,
                "head": batch.head,
                "lag": self.lag,
            },
        )
        return progress

    def _note_blocked(self, error: CorruptNotificationBatchError, after: int) -> None:
        if self.blocked is None or self.blocked.last_position != error.last_position:
            logger.error(
                "%s stopped at an unreadable notification batch",
                self.consumer.name,
                extra={
                    "consumer": self.consumer.name,
                    "position": after + 1,
                    "batch_last_position": error.last_position,
                    "reason": error.reason,
                },
            )
        self.blocked = error
        # An operator may move the checkpoint past the batch from another
        # process (skip-batch): read it again at each poll while stopped.
        self._position = None

    def _poll_within(self, deadline: float | None) -> int:
        handled = self.poll(deadline)
        if self._short is not None:
            # Its own writes failed (a bus, a table unavailable): not caught
            # up, whatever it applied. Wait as for an outage, then read again.
            position, end = self._short
            raise StoppedShortError(
                f"{self.consumer.name} stopped short: it handled a batch up to "
                f"position {end} only as far as {position} (something it writes "
                "to failed; a consumer that logs says what); it is handed the "
                "rest again from its checkpoint at the next poll.",
                handled,
            )
        return handled

    def wait(self, position: int, timeout: float) -> None:
        """Wait until the consumer's position reaches ``position`` (read-your-writes).

        Polls here when no thread runs this runner; else waits for its polls.
        Raises ``TimeoutError`` after ``timeout`` seconds, and re-raises what
        stopped the runner's thread.
        """
        deadline = time.monotonic() + timeout
        while self.position < position:
            if self._error is not None:
                raise self._error
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.consumer.name} is at position {self.position}, not yet "
                    f"{position}, after {timeout:g}s"
                    + (
                        f": it is stopped at an unreadable batch ({self.blocked})"
                        if self.blocked is not None
                        else ""
                    )
                    + "."
                )
            if self._thread is None:
                if not self.poll() and self.position < position:
                    time.sleep(min(left, 0.01))
            else:
                with self._polled:
                    self._polled.wait(min(left, self.interval))


def drain_handler(
    make_runner: Callable[[], Runner],
    *,
    margin_ms: float = STOP_MARGIN_MS,
    wait_out_short: bool = True,
) -> Callable[[Any, Any], dict[str, int]]:
    """Return a Lambda handler draining the runner ``make_runner`` makes (once).

    Each invocation (a wake-up, or a schedule) polls to the tail or until the
    context's remaining time is under ``margin_ms``. Returns the events
    handled, the position, and whether the runner is stopped at an unreadable
    batch (the lag goes to the runner's metrics). A consumer still stopping
    short when that time is up (its own writes failing) raises
    :class:`~ledger.feeds.StoppedShortError`: the invocation did not catch up.
    ``wait_out_short`` false: it raises at the first poll stopped short,
    rather than waiting and polling again for the invocation's time.
    """
    made: list[Runner] = []

    def handler(event: Mapping[str, Any] | None, context: Any) -> dict[str, int]:
        del event  # a wake-up or a schedule's: either way, read to the tail
        if not made:
            made.append(make_runner())
        runner = made[0]
        handled = runner.drain(
            deadline_of(context, margin_ms), wait_out_short=wait_out_short
        )
        return {
            "applied": handled,
            "position": runner.position,
            "blocked": int(runner.blocked is not None),
        }

    return handler
