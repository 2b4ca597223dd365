"""Metrics of projectors, and the structured reports every feed logs.

(Over 400 lines as one concept: the metrics a projector records and the
structured log reports that carry the same numbers; each report both logs
and records, so the two stay together.)

A projector reports to its :class:`Metrics` (``Projector.metrics``, a class
attribute or a constructor argument; default :data:`NO_METRICS`): any object
with ``record(name, value, unit, projection)`` and ``flush()``. ledger offers
three: :class:`NoMetrics`, :class:`MemoryMetrics` (kept in a list, for
tests) and :class:`EmbeddedMetrics` (CloudWatch embedded metric format: JSON
lines on stdout that CloudWatch Logs turns into metrics, which is how a
Lambda function publishes metrics without an API call or a permission). The
Lambda handler uses :class:`EmbeddedMetrics` unless :data:`LEDGER_METRICS`
says otherwise.

Every metric has one dimension, ``Projection`` (the projector's ``name``),
in namespace ``ledger``; keep it so, since a metric with another set of
dimensions is another metric, which dashboards and alarms built on this one
would not see. A name is not unique across stacks, so ``deploy/template.yaml``
alarms on parked events through a metric filter on its own function's log
(the ERROR line :func:`report_parked` writes), not on ``EventsParked``.

The reports below log through the logger their caller passes (each module's
own, under ``ledger.projections``) with ``extra=`` fields: ids, versions,
counts, sizes, and an error's type and place
(:func:`~ledger.projections.deadletters.error_summary`). Never event state,
read-model bodies or an error's message: messages quote the data that failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from eventsourcing.utils import Environment

from ledger.projections.deadletters import error_summary
from ledger.projections.models import Outcome, ParkedEvent
from ledger.projections.views import parked_aggregate

if TYPE_CHECKING:
    from ledger.projections.projector import Projector
    from ledger.projections.session import Session

NAMESPACE = "ledger"
"""The CloudWatch namespace of every metric."""
DIMENSION = "Projection"
"""The one dimension of every metric: the projector's ``name``."""

COUNT = "Count"
MILLISECONDS = "Milliseconds"

EVENTS_PARKED = "EventsParked"
"""Count: events a commit parked as dead letters (a redrive that failed
again parks its event again)."""
EVENTS_APPLIED = "EventsApplied"
"""Count: events a commit applied (versions its aggregates moved forward)."""
HANDLER_RETRIES = "HandlerRetries"
"""Count: retries of a failing handler (each one waited ``retry_delays``)."""
COMMIT_ITEMS = "CommitItems"
"""Count: read-model items and tracking written by one commit (a sample per
commit)."""
STREAM_BATCH_RECORDS = "StreamBatchRecords"
"""Count: stream records in a batch (Lambda's or the poller's), after
records from other tables' streams were dropped."""
ITERATOR_AGE = "IteratorAgeMilliseconds"
"""Milliseconds: when a stream batch was processed, the age of its newest
record (``ApproximateCreationDateTime``), as Lambda's ``IteratorAge``."""
LAG = "Lag"
"""Count: events of the application sequence after what the sequence feed
has applied, after each page it applied."""
INDEX_RECORDS_APPENDED = "IndexRecordsAppended"
"""Count: events the indexer appended to the sequence in a round (dimension:
the events table's name, as for the two below)."""
INDEX_LAG_RECORDS = "IndexLagRecords"
"""Count: stream records after the indexer's checkpoints when a round began, as
far as it read (up to its ``batch_size`` per shard; ``ledger index status``
counts further)."""
INDEX_OLDEST_UNINDEXED_AGE = "IndexOldestUnindexedAgeMilliseconds"
"""Milliseconds: in a round, the age of the oldest stream record the indexer
read, not indexed when the round began: the alarm's measure of index lag."""

SAGA_DIMENSION = "SagaApplication"
"""The one dimension of a saga application's metrics: its ``name``
(:class:`ledger.sagas.SagaApplication` reports through these same classes,
with ``EmbeddedMetrics(dimension=SAGA_DIMENSION)``)."""
PUBLICATION_DIMENSION = "Publication"
"""The one dimension of a publisher's metrics (its ``Lag`` behind the index):
its publication's ``name``."""
SAGAS_PARKED = "SagasParked"
"""Count: sagas parked because a step kept failing (a redrive that failed
again parks its saga again). ``deploy/template.yaml`` alarms on its Sum."""
SAGA_STEP_RETRIES = "SagaStepRetries"
"""Count: retries of a saga step whose command failed (each one waited
``SagaApplication.step_retry_delays``)."""

LEDGER_METRICS = "LEDGER_METRICS"
"""Environment key: where the Lambda handler's projector sends its metrics.
``emf`` (:class:`EmbeddedMetrics` on stdout) or ``none``. Default: the
projector class's ``metrics`` if it sets one, else ``emf``. May be prefixed
with the projector's upper-cased name (``ORDERVIEWS_LEDGER_METRICS``), like
its view's keys."""

_MAX_VALUES = 100
"""Values of one metric in one embedded-metric-format line (CloudWatch's limit)."""


class Metrics(Protocol):
    """Where a projector's metrics go."""

    def record(self, name: str, value: float, unit: str, projection: str) -> None:
        """Note one value of a metric of a projection."""
        ...  # pragma: no cover

    def flush(self) -> None:
        """Send what was noted (feeds call this after each batch, poll or event)."""
        ...  # pragma: no cover


class NoMetrics:
    """Metrics that go nowhere: the default."""

    def record(self, name: str, value: float, unit: str, projection: str) -> None:
        """Do nothing."""

    def flush(self) -> None:
        """Do nothing."""


NO_METRICS = NoMetrics()


@dataclass(frozen=True)
class Measurement:
    """One value recorded by :class:`MemoryMetrics`."""

    name: str
    value: float
    unit: str
    projection: str


class MemoryMetrics:
    """Metrics kept in memory, for tests and for reading them in process."""

    def __init__(self) -> None:
        self.measurements: list[Measurement] = []
        self.flushes = 0
        self._lock = threading.Lock()

    def record(self, name: str, value: float, unit: str, projection: str) -> None:
        """Keep the value."""
        with self._lock:
            self.measurements.append(Measurement(name, value, unit, projection))

    def flush(self) -> None:
        """Count the flush; the values stay."""
        self.flushes += 1

    def values(self, name: str) -> list[float]:
        """Return every value recorded of a metric, oldest first."""
        with self._lock:
            return [m.value for m in self.measurements if m.name == name]

    def total(self, name: str) -> float:
        """Return the sum of a metric's values."""
        return sum(self.values(name))


# ledger writes the embedded metric format itself (this class and
# ``embedded_metric_lines``, some 75 lines) instead of through Powertools
# Metrics (aws-lambda-powertools 3.37) or aws-embedded-metrics (3.5), because
# each would change what reaches CloudWatch or cost more than it saves:
# - Powertools writes every value as a float array (``[1.0]``, not ``1``), and
#   by itself prints a line to stdout, not to ``stream``, when a metric reaches
#   100 values; it adds a ``service`` dimension whenever POWERTOOLS_SERVICE_NAME
#   is set (another metric, which the template's alarms would not see), and its
#   ``flush_metrics`` writes nothing when POWERTOOLS_DEV is set. Importing it
#   hooks every botocore session (ledger's DynamoDB clients too) to add its user
#   agent. Its package is 7.6 MB for the one module ledger would use.
# - aws-embedded-metrics writes the shape this writes, but imports aiohttp: it
#   adds about 115 ms to the 260 ms that importing the deployed projector's
#   handler takes (``python -X importtime``: ``benchmarks/bench_libraries.py``)
#   and 12 MB of dependencies. It reads its settings once, at import.
#   Outside Lambda it probes the EC2 metadata endpoint, then sends to a
#   CloudWatch agent on TCP port 25888, so the stream poller, the sequence feed
#   and the CLI would lose their metrics where no agent listens, where this
#   prints them to stdout.
# Neither writes to a given stream, which is how tests read the lines back, and
# each holds one set of dimension values, so the grouping by projection and the
# lock below would stay all the same.
class EmbeddedMetrics:
    """CloudWatch embedded metric format: a JSON line per projection per flush.

    Written to ``stream`` (default: stdout at each flush, which Lambda sends
    to the function's log group, where CloudWatch extracts the metrics).
    Each value recorded is a sample (a metric with several is written as an
    array, so Sum, Maximum and the rest are right); a metric with more than
    100 values in one flush continues on further lines. Thread-safe.
    ``dimension`` names the one dimension (default ``Projection``; a saga
    application's is :data:`SAGA_DIMENSION`).
    """

    def __init__(
        self, stream: TextIO | None = None, *, dimension: str = DIMENSION
    ) -> None:
        self.stream = stream
        self.dimension = dimension
        self._pending: dict[str, dict[tuple[str, str], list[float]]] = {}
        self._lock = threading.Lock()

    def record(self, name: str, value: float, unit: str, projection: str) -> None:
        """Keep the value until the next flush."""
        with self._lock:
            by_metric = self._pending.setdefault(projection, {})
            by_metric.setdefault((name, unit), []).append(value)

    def flush(self) -> None:
        """Write the values kept since the last flush, then forget them."""
        with self._lock:
            pending, self._pending = self._pending, {}
        stream = self.stream or sys.stdout
        for projection, by_metric in pending.items():
            for line in embedded_metric_lines(projection, by_metric, self.dimension):
                stream.write(line + "\n")
        stream.flush()


def embedded_metric_lines(
    projection: str,
    values: Mapping[tuple[str, str], Sequence[float]],
    dimension: str = DIMENSION,
) -> list[str]:
    """Return embedded-metric-format lines for one projection's values.

    ``projection`` is the value of the one dimension, named ``dimension``.
    """
    lines = []
    timestamp = int(time.time() * 1000)
    for start in range(0, max(map(len, values.values()), default=0), _MAX_VALUES):
        chunk = {
            key: list(samples[start : start + _MAX_VALUES])
            for key, samples in values.items()
            if samples[start : start + _MAX_VALUES]
        }
        document: dict[str, Any] = {
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [
                    {
                        "Namespace": NAMESPACE,
                        "Dimensions": [[dimension]],
                        "Metrics": [
                            {"Name": name, "Unit": unit} for name, unit in chunk
                        ],
                    }
                ],
            },
            dimension: projection,
        }
        for (name, _), samples in chunk.items():
            document[name] = samples[0] if len(samples) == 1 else samples
        lines.append(json.dumps(document, separators=(",", ":")))
    return lines


def metrics_from_env(
    projector_class: type[Projector], env: Mapping[str, str] | None = None
) -> Metrics:
    """Return the metrics :data:`LEDGER_METRICS` chooses for a Lambda projector."""
    environment = Environment(projector_class.name, {**os.environ, **(env or {})})
    choice = environment.get(LEDGER_METRICS)
    if choice is None:
        own = projector_class.metrics
        return EmbeddedMetrics() if isinstance(own, NoMetrics) else own
    if choice.strip().lower() == "emf":
        return EmbeddedMetrics()
    if choice.strip().lower() == "none":
        return NO_METRICS
    raise OSError(f"Invalid {LEDGER_METRICS} {choice!r}: use 'emf' or 'none'.")


# Reports --------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitReport:
    """What a session's commit writes: measured before, reported after it."""

    items: int
    bytes: int
    events_applied: int
    parked: list[ParkedEvent]

    @classmethod
    def of(cls, session: Session) -> CommitReport:
        """Measure the session's pending commit."""
        parked = [
            model
            for model in session.writes.values()
            if isinstance(model, ParkedEvent) and not _waited_behind(session, model)
        ]
        return cls(
            session.pending_actions(), session.pending_bytes(), session.applied, parked
        )

    def report(self, projector: Projector, logger: logging.Logger) -> None:
        """Log and record the commit, once it is done."""
        if not self.items:
            return
        name = projector.name
        logger.debug(
            "%s committed %d items (%d bytes)",
            name,
            self.items,
            self.bytes,
            extra={
                "projection": name,
                "items": self.items,
                "bytes": self.bytes,
                "events_applied": self.events_applied,
                "parked": len(self.parked),
            },
        )
        projector.metrics.record(COMMIT_ITEMS, self.items, COUNT, name)
        if self.events_applied:
            projector.metrics.record(EVENTS_APPLIED, self.events_applied, COUNT, name)
        report_parked(projector, logger, self.parked)


def _waited_behind(session: Session, parked: ParkedEvent) -> bool:
    """Return True if ``parked`` was rewritten by an event waiting behind it.

    On a total order, each such event records on the dead letter how far the
    feed went past; that parks nothing new.
    """
    before = session.models.get(parked.own_key())
    return (
        isinstance(before, ParkedEvent)
        and before.version == parked.version
        and before.parked_at == parked.parked_at
    )


def report_parked(
    projector: Projector, logger: logging.Logger, parked: Sequence[ParkedEvent]
) -> None:
    """Log each event a commit parked, and count them (``EventsParked``)."""
    for event in parked:
        logger.error(
            "%s parked version %d of aggregate %s: %s",
            projector.name,
            event.version,
            event.aggregate_id,
            event.error,
            extra={
                "projection": projector.name,
                "aggregate_id": event.aggregate_id,
                "version": event.version,
                "topic": event.topic,
                "position": event.position,
                "attempts": event.attempts,
                "error": event.error,
            },
        )
    if parked:
        projector.metrics.record(EVENTS_PARKED, len(parked), COUNT, projector.name)


def parked_in(writes: Iterable[tuple[str, str | None]]) -> list[ParkedEvent]:
    """Return the parked events among written ``(key, body)`` pairs."""
    return [
        ParkedEvent.model_validate_json(body)
        for key, body in writes
        if parked_aggregate(key) is not None and body is not None
    ]


def report_retry(
    projector: Projector,
    logger: logging.Logger,
    event: Any,
    *,
    attempt: int,
    error: BaseException,
    delay: float,
) -> None:
    """Log a handler's failed attempt that will be retried (``HandlerRetries``)."""
    summary = error_summary(error)
    logger.warning(
        "%s handler failed on version %d of aggregate %s (attempt %d): %s; "
        "retrying in %.2fs",
        projector.name,
        event.originator_version,
        event.originator_id,
        attempt,
        summary,
        delay,
        extra={
            "projection": projector.name,
            "aggregate_id": str(event.originator_id),
            "version": event.originator_version,
            "attempt": attempt,
            "error": summary,
            "retry_in": delay,
        },
    )
    projector.metrics.record(HANDLER_RETRIES, 1, COUNT, projector.name)


def report_records_failed(
    logger: logging.Logger,
    who: Mapping[str, str],
    records: Sequence[tuple[Any, ...]],
    error: BaseException,
) -> None:
    """Log stream records reported failed (Lambda or the poller delivers them again).

    ``records`` are ``(sequence number, aggregate id, ...)`` tuples; ``who``
    names the consumer in the log record's fields (``{"projection": name}``).
    """
    summary = error_summary(error)
    logger.warning(
        "%s could not process %d stream records (first %s): %s",
        "/".join(who.values()),
        len(records),
        records[0][0] if records else None,
        summary,
        extra={
            **who,
            "records": len(records),
            "sequence_numbers": [record[0] for record in records],
            "aggregate_ids": sorted({str(record[1]) for record in records}),
            "error": summary,
        },
    )


def noting_outcome(
    action: Callable[[Session], object], outcomes: dict[str, Outcome], number: str
) -> Callable[[Session], object]:
    """Return ``action``, noting the outcome it returns last under ``number``."""

    def noted(session: Session) -> object:
        outcome = action(session)
        if isinstance(outcome, Outcome):
            outcomes[number] = outcome
        return outcome

    return noted


def iterator_age_ms(records: Iterable[Mapping[str, Any]], now: float) -> float | None:
    """Return how old the newest record was at ``now`` (epoch seconds), in ms.

    From ``ApproximateCreationDateTime``: epoch seconds in Lambda's JSON, a
    datetime from the boto3 streams client. None if no record has one.
    """
    created = []
    for record in records:
        value = record.get("dynamodb", {}).get("ApproximateCreationDateTime")
        if isinstance(value, datetime):
            created.append(value.timestamp())
        elif isinstance(value, int | float | str):
            created.append(float(value))
    if not created:
        return None
    return max(0.0, (now - max(created)) * 1000)


def report_batch(
    projector: Projector,
    logger: logging.Logger,
    records: Sequence[Mapping[str, Any]],
    *,
    outcomes: Mapping[str, Outcome],
    failed: Sequence[str],
    received: float,
) -> None:
    """Log a stream batch's summary and record its size and iterator age.

    ``outcomes`` says what became of each record applied or offered (by
    sequence number); ``received`` is when the batch came (epoch seconds).
    """
    name = projector.name
    failed_set = set(failed)
    counts = Counter(o for n, o in outcomes.items() if n not in failed_set)
    age = iterator_age_ms(records, received)
    logger.log(
        logging.WARNING if failed else logging.INFO,
        "%s stream batch: %d records, %d applied, %d parked, %d failed",
        name,
        len(records),
        counts[Outcome.APPLIED],
        counts[Outcome.PARKED],
        len(failed_set),
        extra={
            "projection": name,
            "records": len(records),
            "applied": counts[Outcome.APPLIED],
            "parked": counts[Outcome.PARKED],
            "waiting": counts[Outcome.WAITING],
            "duplicates": counts[Outcome.DUPLICATE],
            "failed": len(failed_set),
            "iterator_age_ms": age,
        },
    )
    projector.metrics.record(STREAM_BATCH_RECORDS, len(records), COUNT, name)
    if age is not None:
        projector.metrics.record(ITERATOR_AGE, age, MILLISECONDS, name)


def report_lag(
    projector: Projector, logger: logging.Logger, position: int, head: int
) -> None:
    """Log and record how far the sequence feed is behind the sequence's head."""
    lag = max(0, head - position)
    logger.debug(
        "%s applied the sequence up to %d of %d",
        projector.name,
        position,
        head,
        extra={
            "projection": projector.name,
            "position": position,
            "head": head,
            "lag": lag,
        },
    )
    projector.metrics.record(LAG, lag, COUNT, projector.name)


__all__ = [
    "COMMIT_ITEMS",
    "DIMENSION",
    "EVENTS_APPLIED",
    "EVENTS_PARKED",
    "HANDLER_RETRIES",
    "INDEX_LAG_RECORDS",
    "INDEX_OLDEST_UNINDEXED_AGE",
    "INDEX_RECORDS_APPENDED",
    "ITERATOR_AGE",
    "LAG",
    "LEDGER_METRICS",
    "NAMESPACE",
    "NO_METRICS",
    "PUBLICATION_DIMENSION",
    "SAGAS_PARKED",
    "SAGA_DIMENSION",
    "SAGA_STEP_RETRIES",
    "STREAM_BATCH_RECORDS",
    "CommitReport",
    "EmbeddedMetrics",
    "Measurement",
    "MemoryMetrics",
    "Metrics",
    "NoMetrics",
    "embedded_metric_lines",
    "metrics_from_env",
]
