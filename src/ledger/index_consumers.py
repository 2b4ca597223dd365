"""Lambda entry points of the ``indexed`` ordering: the indexer and its followers.

In ``DYNAMODB_ORDERING=indexed`` one function per events table reads the
table's stream, the indexer; every other consumer reads the index (the
application sequence in the notifications table), never the stream, so a
stream keeps one reader however many consumers there are (DynamoDB Streams
throttles past two per shard). ``deploy/template.yaml`` runs:

* the indexer (:func:`indexer_handler`; ``ledger.indexer.lambda_handler``):
  invoked every minute by a schedule, it runs indexer rounds until its
  invocation's time is nearly up, so one invocation follows the stream at a
  time and the next takes over; after each round that committed it sends a
  **wake-up**, one small SNS message (at most one a second while rounds
  commit back to back, and one after the last), naming the events table and
  the head. With :data:`LEDGER_INDEX_READERS` it reads the shards in reader
  processes (:mod:`ledger.index_readers`), started by the invocation's
  first round and ended before it returns;
* the consumers (:func:`projection_handler`, :func:`publication_handler`,
  :func:`follow_leaders` for sagas): invoked by each wake-up (their SNS
  subscriptions) and by a schedule every minute (a lost wake-up is made up
  within a minute), each drains the index from its own position to the end,
  or until its invocation's time is nearly up. Their positions are committed
  conditionally, so concurrent invocations are safe: one commits each
  position, the other stops or reads again.

Why a wake-up rather than polling or the notifications table's own stream:
see ``deploy/README.md``, "Following the index".
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import boto3
import botocore.exceptions
from eventsourcing.persistence import OperationalError
from eventsourcing.utils import resolve_topic

from ledger.projections.metrics import EmbeddedMetrics

if TYPE_CHECKING:
    from ledger.indexer import Indexer
    from ledger.projections.metrics import Metrics
    from ledger.projections.projector import Projector
    from ledger.publishing import Publication
    from ledger.sagas import SagaApplication

__all__ = [
    "INDEX_DIMENSION",
    "LEDGER_APP",
    "LEDGER_INDEX_READERS",
    "LEDGER_INDEX_TOPIC_ARN",
    "LEDGER_PROJECTORS",
    "LEDGER_PUBLICATION",
    "MIN_READER_TIMEOUT",
    "READERS_END_MS",
    "STOP_MARGIN_MS",
    "WakeUp",
    "deadline_of",
    "follow_leaders",
    "indexer_from_env",
    "indexer_handler",
    "project",
    "projection_handler",
    "publication_handler",
    "publish",
    "reader_timeout_for",
    "readers_end_room",
]

logger = logging.getLogger(__name__)

LEDGER_APP: Final = "LEDGER_APP"
"""The application class, as ``module:Class`` (the key the ``ledger`` command
reads too): whose events table the indexer reads, whose index a consumer follows."""
LEDGER_PROJECTORS: Final = "LEDGER_PROJECTORS"
"""The projector class :func:`project` feeds, as ``module:Class``."""
LEDGER_PUBLICATION: Final = "LEDGER_PUBLICATION"
"""The publication class :func:`publish` publishes, as ``module:Class``."""
LEDGER_INDEX_TOPIC_ARN: Final = "LEDGER_INDEX_TOPIC_ARN"
"""The SNS topic the indexer sends its wake-ups to. Unset: it sends none (the
consumers then follow on their schedule only)."""
LEDGER_INDEX_READERS: Final = "LEDGER_INDEX_READERS"
"""The indexer function's reader processes (``Indexer(..., readers=N)``), a
whole number; unset, empty or 0 (the default): it reads the shards itself.
Readers pay only with a vCPU each, which Lambda gives at 1,769 MB of memory
per vCPU: see ``deploy/README.md``, "Sizing the indexer"."""
SNS_ENDPOINT_URL: Final = "SNS_ENDPOINT_URL"
"""The SNS endpoint (a local one in tests). Default: ``AWS_ENDPOINT_URL_SNS``,
else boto3's own resolution."""
INDEX_DIMENSION: Final = "EventsTable"
"""The dimension of the indexer's metrics (its value: the events table's name)."""
STOP_MARGIN_MS: Final = 10_000
"""Time left at which a handler starts no more work: one more round or page
must end before Lambda's timeout stops the invocation."""
WAKE_UP_INTERVAL: Final = 1.0
"""Seconds between two wake-ups while rounds commit back to back."""
MAX_CONFLICTS: Final = 3
"""Conflicts after which a saga invocation leaves the work to the one it races."""
IDLE_WAIT: Final = 1.0
"""Seconds the indexer waits after a round that found nothing."""
ROUND_INTERVAL: Final = 0.5
"""Seconds from one round's start to the next's, at least. Each round makes
one DescribeStream, which the DynamoDB Streams API allows at most 10 times a
second: at one round per 0.5 s, four indexers stay under it however busy."""
READERS_END_MS: Final = 2_000
"""Time an indexer invocation with reader processes keeps, after a round
whose readers stalled, to send its last wake-up and return; ending the
readers takes a second more per reader (each is given one, then killed)."""
MIN_READER_TIMEOUT: Final = 1.0
"""The shortest reader timeout an indexer round in Lambda is given (seconds):
with less time left for one, the invocation starts no more rounds."""


def deadline_of(context: Any, margin_ms: float = STOP_MARGIN_MS) -> float | None:
    """Return when (``time.monotonic()``) a handler must stop starting work.

    From the Lambda context's ``get_remaining_time_in_millis()``, less
    ``margin_ms``; None without a context (no limit).
    """
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return time.monotonic() + (float(remaining()) - margin_ms) / 1000


def _before(deadline: float | None) -> bool:
    return deadline is None or time.monotonic() < deadline


def _class(env: Mapping[str, str], key: str) -> Any:
    topic = env.get(key) or os.environ.get(key)
    if not topic:
        raise OSError(f"{key} is not set: give the class as module:Class.")
    return resolve_topic(topic.split(",")[0].strip())


# The wake-up ---------------------------------------------------------------------


class WakeUp:
    """Tells the consumers that an index advanced: one SNS message, not one per event.

    Called by the indexer after each committed round (its ``after_write``);
    sends at most one message per ``interval`` seconds and keeps the latest
    head meanwhile, to be sent by :meth:`flush` (called when a round finds
    nothing, and before the invocation ends). A message that cannot be sent
    is logged and dropped: the consumers' schedule makes it up.
    """

    def __init__(
        self,
        topic_arn: str,
        events_table: str,
        client: Any,
        *,
        interval: float = WAKE_UP_INTERVAL,
    ) -> None:
        self.topic_arn = topic_arn
        self.events_table = events_table
        self.client = client
        self.interval = interval
        self.sent = 0
        """Messages sent so far."""
        self._head: int | None = None
        self._last_sent = -float("inf")

    def __call__(self, positions: range) -> None:
        """Note a commit of ``positions``; send a wake-up if none was sent lately."""
        if positions:
            self._head = positions[-1]
        if time.monotonic() - self._last_sent >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Send the wake-up held back, if any."""
        if self._head is None:
            return
        head, self._head = self._head, None
        self._last_sent = time.monotonic()
        try:
            self.client.publish(
                TopicArn=self.topic_arn,
                Message=json.dumps({"events_table": self.events_table, "head": head}),
                # Subscriptions filter on it: a consumer is woken by its tables only.
                MessageAttributes={
                    "events_table": {
                        "DataType": "String",
                        "StringValue": self.events_table,
                    }
                },
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            logger.warning(
                "could not send the index wake-up; consumers follow on their schedule",
                exc_info=True,
                extra={"events_table": self.events_table, "head": head},
            )
            return
        self.sent += 1


def _sns_client(env: Mapping[str, str], region: str) -> Any:
    endpoint = (
        env.get(SNS_ENDPOINT_URL)
        or os.environ.get(SNS_ENDPOINT_URL)
        or os.environ.get("AWS_ENDPOINT_URL_SNS")
        or None
    )
    return boto3.session.Session().client(
        "sns", endpoint_url=endpoint, region_name=region
    )


# The indexer ---------------------------------------------------------------------


def indexer_handler(
    application_class: type[Any],
    env: Mapping[str, str] | None = None,
    *,
    idle_wait: float = IDLE_WAIT,
    round_interval: float = ROUND_INTERVAL,
    sns_client: Any = None,
) -> Callable[[Any, Any], dict[str, int]]:
    """Return the Lambda handler of an application's indexer.

    Each invocation runs rounds (:meth:`~ledger.indexer.Indexer.poll`) until
    the context's remaining time is under :data:`STOP_MARGIN_MS`, starting
    one at most every ``round_interval`` seconds, waiting ``idle_wait``
    after a round that found nothing, and riding out DynamoDB
    being unavailable (waits doubling up to 30 s) while time allows. Without
    a context it catches up once. Metrics go to the log in embedded metric
    format (dimension :data:`INDEX_DIMENSION`). Returns the records consumed,
    the rounds run, the wake-ups sent and the head. The application and
    indexer are made at the first invocation, and kept.

    With :data:`LEDGER_INDEX_READERS` (read from ``env``, else the process's
    environment, when the handler is made: a setting that is not a whole
    number of at least 0 is refused with ``OSError``), the indexer reads the
    shards in that many reader processes, which each invocation ends before
    it returns or raises (logging their process ids, at INFO, and the
    readers replaced meanwhile, which the pool logs as it replaces each, at
    WARNING): a frozen execution environment then holds none, and no reader
    of one invocation can read for the next. Each round gives its readers a
    timeout that fits, even if every try of a reader stalls, before Lambda's
    timeout stops the invocation (:func:`reader_timeout_for`), and a hard
    deadline (the indexer's ``round_deadline``), :func:`readers_end_room`
    before the invocation's end: a reader hung in a call (``GetRecords``
    not answered, which its client's retries would wait out for minutes) is
    killed at the deadline and the round raises
    :class:`~ledger.index_readers.IndexDeadlineError`, so the invocation
    ends its readers and raises in time; the next starts afresh.
    """
    made: dict[str, Any] = {}
    environment = dict(env or {})
    readers = _readers_setting(environment)

    def handler(event: Any, context: Any) -> dict[str, int]:
        del event  # a schedule's: nothing in it
        if not made:
            made["indexer"], made["wake_up"] = _indexer(
                application_class, environment, sns_client, readers
            )
            made["reader_timeout"] = made["indexer"].reader_timeout
        indexer: Indexer = made["indexer"]
        wake_up: WakeUp | None = made["wake_up"]
        deadline = deadline_of(context)
        consumed = rounds = 0
        indexer.round_deadline = None  # set per round, when the context has an end
        # Not a timeout an earlier invocation's last rounds shrank.
        indexer.reader_timeout = made["reader_timeout"]
        try:
            if deadline is None:
                consumed = indexer.catch_up()
                rounds = 1
            else:
                fits = functools.partial(
                    _fit_readers,
                    indexer,
                    deadline_of(context, margin_ms=0),
                    made["reader_timeout"],
                )
                consumed, rounds = _index_until(
                    indexer, wake_up, deadline, idle_wait, round_interval, fits=fits
                )
        finally:
            try:
                if wake_up is not None:
                    wake_up.flush()
            finally:
                _end_readers(indexer)
        return {
            "consumed": consumed,
            "rounds": rounds,
            "wake_ups": 0 if wake_up is None else wake_up.sent,
            "head": indexer.recorder.max_notification_id() or 0,
        }

    return handler


def _readers_setting(env: Mapping[str, str]) -> int:
    value = env.get(LEDGER_INDEX_READERS) or os.environ.get(LEDGER_INDEX_READERS)
    if not value:
        return 0
    try:
        readers = int(value)
    except ValueError:
        readers = -1
    if readers < 0:
        raise OSError(
            f"Invalid {LEDGER_INDEX_READERS} {value!r}: use a whole number of "
            "reader processes, 0 or more (0 or unset: the indexer reads the "
            "shards itself). Give the function a vCPU per reader (1,769 MB of "
            "memory each)."
        )
    return readers


def reader_timeout_for(seconds_left: float, readers: int) -> float:
    """Return the reader timeout with which a round ends within ``seconds_left``.

    A round waits for its readers at once, and gives a reader that stalls
    :data:`~ledger.index_readers.RESTARTS` tries: that many timeouts at
    most, after which the invocation keeps :func:`readers_end_room` to end
    its readers and return. (A reader whose call is under way is waited for
    until the round's deadline, the indexer's ``round_deadline``, and no
    longer.)
    """
    from ledger.index_readers import RESTARTS  # noqa: PLC0415 - with the readers

    return (seconds_left - readers_end_room(readers)) / RESTARTS


def readers_end_room(readers: int) -> float:
    """Return the seconds an invocation keeps after its last round to end ``readers``.

    :data:`READERS_END_MS` to send the last wake-up and return, and a second
    per reader (each is given one to end, then killed).
    """
    return READERS_END_MS / 1000 + readers * 1.0


def _fit_readers(indexer: Indexer, ends: float | None, longest: float) -> bool:
    """Fit the next round in what is left before ``ends``; False: no more rounds.

    Gives its readers a timeout that fits (:func:`reader_timeout_for`, at
    most ``longest``) and a hard deadline (the indexer's ``round_deadline``),
    :func:`readers_end_room` before ``ends``: past it the round kills the
    readers still reading and raises, whatever a call under way may still
    take through its client's retries (minutes, when DynamoDB Streams does
    not answer). False when the timeout would be under
    :data:`MIN_READER_TIMEOUT`. Without readers, or without an end, True.
    """
    indexer.round_deadline = None
    if not indexer.readers or ends is None:
        return True
    timeout = reader_timeout_for(ends - time.monotonic(), indexer.readers)
    if timeout < MIN_READER_TIMEOUT:
        return False
    indexer.reader_timeout = min(timeout, longest)
    indexer.round_deadline = ends - readers_end_room(indexer.readers)
    if indexer._pool is not None:  # made by the invocation's first round
        indexer._pool.timeout = indexer.reader_timeout
    return True


def _end_readers(indexer: Indexer) -> None:
    """End the indexer's reader processes, if it started any, and log them."""
    pool = indexer._pool
    if pool is None:
        return
    pids, restarts = pool.pids(), pool.restarts
    indexer.close()
    logger.info(
        "ended the indexer's reader processes",
        extra={"readers": pids, "restarts": restarts},
    )


def _indexer(
    application_class: type[Any], env: dict[str, str], sns_client: Any, readers: int
) -> tuple[Indexer, WakeUp | None]:
    from ledger.indexer import Indexer, freeze_start_up  # noqa: PLC0415 - at the first call

    application = application_class(env=env or None)
    recorder = application.recorder
    topic = env.get(LEDGER_INDEX_TOPIC_ARN) or os.environ.get(LEDGER_INDEX_TOPIC_ARN)
    wake_up = None
    if topic:
        client = sns_client or _sns_client(env, recorder.connection.region_name)
        wake_up = WakeUp(topic, recorder.events_table_name, client)
    indexer = Indexer(
        recorder,
        after_write=wake_up,
        metrics=EmbeddedMetrics(dimension=INDEX_DIMENSION),
        readers=readers,
    )
    freeze_start_up()  # the function's process runs the indexer only
    return indexer, wake_up


def _index_until(
    indexer: Indexer,
    wake_up: WakeUp | None,
    deadline: float,
    idle_wait: float,
    round_interval: float,
    *,
    fits: Callable[[], bool],
) -> tuple[int, int]:
    from ledger.dynamodb.client import Outage  # noqa: PLC0415

    outage = Outage("indexing", idle_wait)
    consumed = rounds = 0
    while _before(deadline) and fits():
        started = time.monotonic()
        try:
            found = indexer.poll()
        except OperationalError as error:
            outage.wait_out(error, deadline)
            continue
        outage.recovered()
        rounds += 1
        consumed += found
        wait = round_interval - (time.monotonic() - started)
        if not found:
            if wake_up is not None:
                wake_up.flush()
            wait = max(wait, idle_wait)  # the index's lag when idle
        # Only while time is left for another round.
        time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
    return consumed, rounds


# The consumers -------------------------------------------------------------------


def projection_handler(
    projector_class: type[Projector],
    application_class: type[Any],
    env: Mapping[str, str] | None = None,
) -> Callable[[Any, Any], dict[str, int]]:
    """Return a Lambda handler feeding a projector from its application's index.

    Each invocation (a wake-up or the schedule) drains the sequence after the
    view's tracking position (:func:`ledger.feeds.drain_handler` over a
    :class:`~ledger.projections.sequence.SequenceFeed`'s runner), until the
    end of the sequence or the context's deadline (:func:`deadline_of`).
    Returns the events applied, the position reached, and whether the feed
    is stopped at an unreadable batch (``ledger projections skip-batch``);
    the lag behind the head goes to the projector's metrics.
    """
    from ledger.feeds import Runner, drain_handler  # noqa: PLC0415
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415
    from ledger.projections.metrics import metrics_from_env  # noqa: PLC0415
    from ledger.projections.projector import event_loader  # noqa: PLC0415
    from ledger.projections.sequence import SequenceFeed  # noqa: PLC0415

    def runner() -> Runner:
        application = application_class(env=env)
        projector = projector_class(
            open_view(projector_class, env),
            event_loader(application),
            metrics=metrics_from_env(projector_class, env),
        )
        return SequenceFeed(projector, application).runner

    return drain_handler(runner, margin_ms=STOP_MARGIN_MS)


def publication_handler(
    publication_class: type[Publication],
    application_class: type[Any],
    env: Mapping[str, str] | None = None,
) -> Callable[[Any, Any], dict[str, int]]:
    """Return a Lambda handler publishing a publication from its application's index.

    Each invocation drains the publisher's runner
    (:meth:`~ledger.publishing.Publisher.runner`, through
    :func:`~ledger.feeds.drain_handler`) until the end of the sequence, a
    position not done, or the context's deadline, riding out DynamoDB being
    unavailable meanwhile; the runner records the publisher's ``Lag`` behind
    the head in embedded metric format (dimension ``Publication``, the
    publication's name). Returns the positions done and the cursor. An
    invocation that leaves events not done (a ``PutEvents`` request failed
    as a whole, or a dead letter could not be stored) raises
    ``OperationalError`` after moving the cursor as far as it could, and one
    stopped at an unreadable batch of the index raises
    :class:`~ledger.dynamodb.batches.CorruptNotificationBatchError`, so the
    function's errors alarm reports what would otherwise only hold the
    cursor still.
    """
    from ledger.feeds import Runner, StoppedShortError, drain_handler  # noqa: PLC0415
    from ledger.projections.metrics import PUBLICATION_DIMENSION  # noqa: PLC0415
    from ledger.publishing import Publisher  # noqa: PLC0415

    @functools.cache
    def publisher() -> Publisher:
        return Publisher(publication_class(), application_class(env=env), env=env)

    @functools.cache
    def runner() -> Runner:
        return publisher().runner(
            metrics=EmbeddedMetrics(dimension=PUBLICATION_DIMENSION)
        )

    # A PutEvents request failing as a whole is mostly the bus's setting (gone,
    # refused): waiting it out would hold each invocation for its whole time,
    # and wake-ups start one a second. The next wake-up or schedule retries.
    drain = drain_handler(runner, wait_out_short=False)

    def handler(event: Any, context: Any) -> dict[str, int]:
        # What this invocation leaves not done, not what an earlier one left.
        publisher().consumer.not_done = 0
        try:
            result = drain(event, context)
        except StoppedShortError as short:
            # Said below, with the count.
            result = {"applied": short.found, "position": runner().position}
        blocked = runner().blocked
        if blocked is not None:
            raise blocked
        failed = publisher().consumer.not_done
        if failed:
            raise OperationalError(
                f"{failed} events of {publication_class.__name__}'s index were not "
                f"published (PutEvents failed as a whole, or a dead letter could "
                f"not be stored; the log says which): the cursor stays at "
                f"{result['position']}, before them, and the next invocation sends "
                "them again. Fix the bus, its permission or the table named in the "
                "log."
            )
        return {"published": result["applied"], "position": result["position"]}

    return handler


def follow_leaders(
    saga_application: SagaApplication,
    leaders: Iterable[Any],
    deadline: float | None,
    *,
    page_size: int | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Let a saga application process its leaders' and its own indexes; return events.

    A :class:`~ledger.sagas.SagaRunner` with no indexers, drained: each
    leader's feed, then the one sending the saga application's steps, to
    the end of its index, in rounds until a round processes nothing or
    ``deadline`` passes, riding out DynamoDB being unavailable until then.
    Another invocation deciding meanwhile (a conflict on a saga or a
    tracking position) makes it read the positions again; after
    :data:`MAX_CONFLICTS` such rounds it stops (the other goes on, and the
    next wake-up or the schedule reads again). Each feed records its lag
    behind the head (``Lag``, dimension ``SagaApplication``) through
    ``metrics``, by default :func:`~ledger.sagas.metrics_in_lambda`'s.
    """
    from ledger.sagas import SagaRunner, metrics_in_lambda  # noqa: PLC0415

    runner = SagaRunner(
        saga_application,
        leaders,
        indexers=(),
        page_size=page_size,
        metrics=metrics if metrics is not None else metrics_in_lambda(saga_application),
    )
    return runner.drain(deadline, max_races=MAX_CONFLICTS)


# Handlers configured by the environment --------------------------------------------


@functools.cache
def indexer_from_env() -> Callable[[Any, Any], dict[str, int]]:
    """Return the indexer handler of ``LEDGER_APP`` (made once per process)."""
    return indexer_handler(_class({}, LEDGER_APP))


@functools.cache
def _project_from_env() -> Callable[[Any, Any], dict[str, int]]:
    return projection_handler(_class({}, LEDGER_PROJECTORS), _class({}, LEDGER_APP))


@functools.cache
def _publish_from_env() -> Callable[[Any, Any], dict[str, int]]:
    return publication_handler(_class({}, LEDGER_PUBLICATION), _class({}, LEDGER_APP))


def project(event: Any, context: Any) -> dict[str, int]:
    """Feed ``LEDGER_PROJECTORS``' projector from ``LEDGER_APP``'s index (Lambda)."""
    return _project_from_env()(event, context)


def publish(event: Any, context: Any) -> dict[str, int]:
    """Publish ``LEDGER_PUBLICATION`` from ``LEDGER_APP``'s index (Lambda)."""
    return _publish_from_env()(event, context)


def reset() -> None:
    """Forget the handlers made from the environment (tests; a new environment)."""
    indexer_from_env.cache_clear()
    _project_from_env.cache_clear()
    _publish_from_env.cache_clear()
