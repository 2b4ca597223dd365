"""The one loop of every feed: poll, ride out DynamoDB being unavailable, stop.

:class:`Polling` is what a feed that polls has in common, whatever it reads
(the application sequence: :class:`~ledger.feeds.Runner`; an events stream's
shards: :class:`~ledger.feeds.StreamPoller`): run until stopped, drain until
a deadline, start and stop in a daemon thread. Each of those, and a Lambda
batch of pushed stream records (:func:`~ledger.feeds.stream_handler`), goes
through :func:`keep_polling`, which waits DynamoDB out for them. (The
indexer's Lambda handler, ``ledger.index_consumers.indexer_handler``, runs
rounds paced to its invocation's end in a loop of its own, waiting with the
same :class:`~ledger.dynamodb.client.Outage`.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Self

from eventsourcing.persistence import OperationalError

from ledger.dynamodb.client import MAX_OUTAGE_WAIT, Outage, outage_wait

logger = logging.getLogger(__name__)


class StoppedShortError(OperationalError):
    """A poll that stopped short of what is there: its consumer failed some of it.

    Raised by a feed's poll in :meth:`Polling.run`, :meth:`Polling.drain`
    and :meth:`Polling.checked_poll` when the consumer reported work failed
    (a stream consumer turns DynamoDB being unavailable for its own writes
    into failed records; a consumer of the sequence reports a position
    short of its batch), so that the loop waits as for an outage (doubling
    waits) and polls again, rather than taking the poll for one that found
    nothing. ``found`` is what the poll handled before; when the loop gives
    up and raises it, what all its polls handled.
    """

    def __init__(self, message: str, found: int) -> None:
        """Say what stopped short; ``found``: what the poll handled all the same."""
        super().__init__(message)
        self.found = found


def _wait_after_short(
    outage: Outage, error: StoppedShortError, deadline: float | None
) -> float | None:
    """Return ``outage``'s next wait after a poll its consumer cut short, or None.

    The waits, and the patience or ``deadline`` they must end within, are
    those of an outage (one count for both: a consumer's writes failing is
    often DynamoDB being unavailable); but what is logged is what failed, as
    the error says, since the consumer may have failed for another reason.
    """
    if deadline is not None:
        outage.patience = outage.waited + max(0.0, deadline - time.monotonic())
    outage.failures += 1
    wait = outage_wait(outage.failures, outage.first, outage.longest)
    if outage.patience is not None and outage.waited + wait > outage.patience:
        return None
    outage.waited += wait
    logger.warning(
        "%s Polling again in %.1fs.",
        str(error).rstrip(),
        wait,
        extra={"failures": outage.failures, "wait": wait, "found": error.found},
    )
    return wait


def keep_polling(
    poll: Callable[[], int],
    outage: Outage,
    *,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    idle: float | None = None,
    wait_out_short: bool = True,
) -> int:
    """Call ``poll`` until it finds nothing, ``deadline`` passes or ``stop`` is set.

    Returns what the polls found in all. The first poll is always made
    (unless ``stop`` is set already); none starts after ``deadline`` (a
    ``time.monotonic()``). After a poll that found nothing the loop ends,
    or, with ``idle``, waits that many seconds and polls again.

    When DynamoDB is unavailable (``OperationalError`` after the client's own
    retries: an outage, throttling that outlasts them), it waits ``outage``'s
    next wait (doubling) and polls again: within ``outage``'s patience, or
    with a ``deadline`` only while the wait ends before it; then the error
    is raised. A poll raising :class:`StoppedShortError` (its consumer failed
    some of what is there) is waited out the same way (the same doubling
    waits, logged as what failed rather than as DynamoDB being unavailable),
    what it handled counted; raised, it carries what all the polls handled.
    With ``wait_out_short`` false it is raised at once instead; and a loop
    ending at ``deadline`` right after such a poll raises it too (it did not
    catch up). Nothing is lost by waiting, since a poll commits nothing it did not
    apply and checkpoints only what it committed. Every wait ends early
    when ``stop`` is set.
    """
    waiting = stop if stop is not None else threading.Event()
    found_in_all = 0
    short: StoppedShortError | None = None
    """The last poll's error, if it stopped short."""
    while not waiting.is_set():
        short = None
        try:
            found = poll()
        except StoppedShortError as error:
            found_in_all += error.found
            error.found = found_in_all
            wait = (
                _wait_after_short(outage, error, deadline) if wait_out_short else None
            )
            if wait is None:
                raise
            short = error
            waiting.wait(wait)
        except OperationalError as error:
            wait = (
                outage.failed(error)
                if deadline is None
                else outage.failed_before(error, deadline)
            )
            if wait is None:
                raise
            waiting.wait(wait)
        else:
            outage.recovered()
            found_in_all += found
            if not found:
                if idle is None:
                    break
                waiting.wait(idle)
        if deadline is not None and time.monotonic() >= deadline:
            if short is not None:
                # Its wait ended at the deadline: still short, not caught up.
                short.found = found_in_all
                raise short
            break
    return found_in_all


def run_polls(
    poll: Callable[[], int],
    stop: threading.Event,
    *,
    interval: float = 1.0,
    max_backoff: float = MAX_OUTAGE_WAIT,
    on_unavailable: Callable[[Exception, float], None] | None = None,
) -> None:
    """Call ``poll`` until ``stop`` is set; wait ``interval`` when it found nothing.

    When DynamoDB is unavailable (``OperationalError`` after the client's own
    retries: an outage, throttling that outlasts them), wait and poll again,
    doubling the wait up to ``max_backoff``, for as long as it takes: nothing
    is lost, since a poll commits nothing it did not apply and checkpoints
    only what it committed. ``on_unavailable(error, wait)`` is told each time.
    """
    outage = Outage(
        "polling", interval, longest=max_backoff, on_unavailable=on_unavailable
    )
    keep_polling(poll, outage, stop=stop, idle=interval)


def deadline_of(context: Any, margin_ms: float) -> float | None:
    """Return when (``time.monotonic()``) a Lambda invocation must start no more work.

    From the context's ``get_remaining_time_in_millis()``, less
    ``margin_ms``; None without a context (no limit).
    """
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return time.monotonic() + (float(remaining()) - margin_ms) / 1000


class Polling:
    """A feed that polls: run, drain, start and stop around its :meth:`poll`.

    A subclass says what one poll is (:meth:`poll`: read what is there now,
    hand it to its consumer, checkpoint; return how much it handled, 0 if
    nothing) and, if it can stop between batches or its consumer can fail
    part of a poll, :meth:`_poll_within`. Everything else is the same for
    every feed, and is here: :meth:`run` until stopped, :meth:`drain` until
    a deadline (a Lambda invocation, ``ledger projections run --once``),
    :meth:`start`/:meth:`stop` in a daemon thread (in-process: tests, the
    demo), all riding out DynamoDB being unavailable.
    """

    def __init__(self, *, interval: float = 1.0) -> None:
        """Wait ``interval`` seconds after a poll that found nothing."""
        self.interval = interval
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._polled = threading.Condition()

    @property
    def name(self) -> str:
        """What this feed feeds, for logs and its thread's name."""
        return type(self).__name__

    def poll(self) -> int:
        """Handle what is there now, once; return how much (0: nothing)."""
        raise NotImplementedError

    def checked_poll(self, deadline: float | None = None) -> int:
        """One poll as :meth:`run` and :meth:`drain` make it; return how much.

        Starts no batch after ``deadline`` (a ``time.monotonic()``), if
        given. Unlike :meth:`poll`, raises :class:`StoppedShortError` if the
        consumer failed part of what is there: for a loop of its own (``ledger
        projections run``) through :func:`run_polls`, which then waits,
        doubling, rather than polling again at the idle interval.
        """
        return self._poll_within(deadline)

    def _poll_within(self, deadline: float | None) -> int:
        """One poll of :meth:`run` or :meth:`drain`: no batch after ``deadline``.

        By default a whole :meth:`poll`. Raises :class:`StoppedShortError` if the
        consumer failed part of what is there (the loop then waits and polls
        again).
        """
        del deadline
        return self.poll()

    def drain(
        self,
        deadline: float | None = None,
        *,
        patience: float | None = None,
        wait_out_short: bool = True,
    ) -> int:
        """Poll until a poll finds nothing or ``deadline`` passes; return how much.

        For a Lambda invocation or ``ledger projections run --once``. Starts
        nothing after ``deadline`` (a ``time.monotonic()``). Rides out
        DynamoDB being unavailable, and a consumer failing part of a poll
        (:class:`StoppedShortError`), while the deadline allows; without a
        deadline, for ``patience`` seconds of waiting in all (default: not at
        all). Then the error is raised. ``wait_out_short`` false: a poll
        stopped short raises at once (for a consumer whose failures are
        rarely transient and that is invoked again soon anyway).
        """
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        outage = Outage(
            f"feeding {self.name}",
            self.interval,
            patience=None if deadline is not None else (patience or 0.0),
        )
        return keep_polling(
            partial(self._poll_within, deadline),
            outage,
            deadline=deadline,
            wait_out_short=wait_out_short,
        )

    def run(
        self,
        stop: threading.Event,
        interval: float | None = None,
        *,
        max_backoff: float = MAX_OUTAGE_WAIT,
        on_unavailable: Callable[[Exception, float], None] | None = None,
    ) -> None:
        """Poll until ``stop`` is set, waiting ``interval`` when idle.

        ``interval`` defaults to the feed's. Rides out DynamoDB being
        unavailable, and a consumer failing part of a poll, for as long as it
        takes, waits doubling up to ``max_backoff`` (see :func:`run_polls`).
        """
        run_polls(
            partial(self._poll_within, None),
            stop,
            interval=self.interval if interval is None else interval,
            max_backoff=max_backoff,
            on_unavailable=on_unavailable,
        )

    def start(self) -> Self:
        """Run in a daemon thread until :meth:`stop` (in-process: tests, the demo).

        Refused while the thread of an earlier start still runs; a thread
        that died is replaced (its error having been raised by :meth:`stop`,
        or being dropped here).
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.name}'s feed is running already.")
        # An event of its own per start: a thread that outlived stop()'s
        # timeout keeps its set event and ends, whatever a later start does.
        stop = self._stop = threading.Event()
        self._error = None

        def run() -> None:
            try:
                self.run(stop)
            except BaseException as error:
                if self._stop is stop:  # not a thread stop() gave up on
                    self._error = error
                with self._polled:
                    self._polled.notify_all()
                raise

        self._thread = threading.Thread(
            target=run, name=f"feed-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread :meth:`start` began, wait for it; raise what ended it.

        The error that ended the thread, if one did, is raised (once). A
        thread still running after ``timeout`` seconds (its consumer busy) is
        left to end by itself at its next chance, with a warning.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning(
                    "%s's feed did not stop within %gs; it ends after the work "
                    "under way",
                    self.name,
                    timeout,
                    extra={"feed": self.name, "timeout": timeout},
                )
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
