"""Dead letters: parking events that keep failing, listing them, redriving them.

An event whose handler still fails after its retries, or that cannot even be
decoded, is *parked*: a :class:`~ledger.projections.models.ParkedEvent` holds
it with its error, position and attempts, and its aggregate's later events
wait behind it. Fed per aggregate, the aggregate's
:class:`~ledger.projections.models.AggregatePosition` records the parked
version too; fed by a total order, the dead letter is all there is, and it
records the last version the feed went past (``passed_version``). A version
that a gap fill could not read from the events table is parked the same way.
A redrive, after the fix, reads the parked event and those behind it from the
events table and applies them, in as many commits as they need: fed per
aggregate, all of them (the feed skips those it meets later); fed by a total
order, those up to ``passed_version`` (the feed applies the later ones when
it reaches them). A
:class:`~ledger.projections.projector.Projector` has :func:`park_record`,
:func:`parked` and :func:`redrive` as its methods.

A redrive logs each aggregate's outcome on ``ledger.projections.deadletters``;
parked events are logged and counted when their commit is done (see
:meth:`~ledger.projections.projector.Projector.commit`).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import PersistenceError
from eventsourcing.utils import get_topic

from ledger.projections.gaps import gap_reason
from ledger.projections.models import AggregatePosition, GapError, Outcome, ParkedEvent
from ledger.projections.session import MAX_COMMIT_ATTEMPTS, Session
from ledger.projections.views import ConcurrentChangeError

if TYPE_CHECKING:
    from ledger.projections.projector import Projector

logger = logging.getLogger(__name__)


def error_summary(error: BaseException, doing: str = "") -> str:
    """Describe an error for a dead letter: its type and where it was raised.

    Never its message: messages often quote the data that failed (a card
    number in the event), and dead letters are listed to operators.
    """
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" at {Path(last.filename).name}:{last.lineno} in {last.name}"
    return f"{type(error).__name__}{where}{doing}"


def park(
    session: Session,
    current: AggregatePosition,
    *,
    version: int,
    topic: str,
    position: int | None,
    error: str,
    attempts: int,
) -> None:
    """Park one version of an aggregate (not committed); its later versions wait.

    Parking the version already parked adds to its attempts.
    """
    earlier = session.get(ParkedEvent, current.aggregate_id)
    passed = None
    if session.total_order:
        # The feed has gone past this version, and past what waited behind
        # an earlier dead letter of the aggregate.
        passed = max(version, (earlier.passed_version or 0) if earlier else 0)
    if earlier is not None and earlier.version == version:
        attempts += earlier.attempts
        position = earlier.position if position is None else position
    session.put(
        ParkedEvent(
            aggregate_id=current.aggregate_id,
            version=version,
            position=position,
            topic=topic,
            error=error,
            attempts=attempts,
            parked_at=datetime.now(UTC),
            passed_version=passed,
        )
    )
    if not session.total_order:
        session.put(current.model_copy(update={"parked_version": version}))


def park_record(
    projector: Projector,
    session: Session,
    aggregate_id: str,
    version: int,
    *,
    topic: str,
    error: str,
    position: int | None = None,
) -> Outcome:
    """Park an event that could not even be decoded (not committed).

    For a feed that cannot hand the record back to its source, as Lambda
    can: its aggregate waits behind it like behind any parked event, and a
    redrive after the fix (an upcaster, a registered topic) reads it from
    the events table and applies it. Earlier missing events of the
    aggregate are applied first (``load_events``).
    """

    def step(may_split: bool) -> Outcome:
        current = projector._position_for(
            session, aggregate_id, version, may_split=may_split
        )
        if isinstance(current, Outcome):
            return current
        park(
            session,
            current,
            version=version,
            topic=topic,
            error=error,
            position=position,
            attempts=1,
        )
        return Outcome.PARKED

    return projector.in_parts(session, step)


def parked(projector: Projector) -> list[ParkedEvent]:
    """Return the parked events of this projector's view, oldest first."""
    return projector.view.parked_events()


def redrive(
    projector: Projector, aggregate_id: str | None = None
) -> dict[str, Outcome]:
    """Apply parked events again (all, or one aggregate's), then what waited.

    Call after fixing the handler. Returns each aggregate's outcome:
    ``APPLIED`` when it caught up, ``PARKED`` when its event failed again (or
    a version is still missing from the events table). Each commit but an
    aggregate's last keeps it parked at the next version to apply, so a
    redrive stopped part way is still listed, and goes on when run again.
    """
    if projector.load_events is None:
        raise GapError(
            "Redrive reads the parked events from the events table: give the "
            "projector load_events (see ledger.projections.event_loader)."
        )
    targets = (
        [aggregate_id] if aggregate_id else [p.aggregate_id for p in projector.parked()]
    )
    outcomes: dict[str, Outcome] = {}
    try:
        for target in targets:
            outcome = outcomes[target] = _redrive_one(projector, target)
            logger.log(
                logging.INFO if outcome is Outcome.APPLIED else logging.WARNING,
                "%s redrove aggregate %s: %s",
                projector.name,
                target,
                outcome.value,
                extra={
                    "projection": projector.name,
                    "aggregate_id": target,
                    "outcome": outcome.value,
                },
            )
    finally:
        projector.metrics.flush()
    return outcomes


def _redrive_one(projector: Projector, aggregate_id: str) -> Outcome:
    for _ in range(MAX_COMMIT_ATTEMPTS):
        session = Session(projector.view)
        parked = session.get(ParkedEvent, aggregate_id)
        current = None
        if parked is not None and parked.passed_version is not None:
            # Parked on a total order: no position per aggregate is kept.
            session.total_order = True
            current = AggregatePosition(
                aggregate_id=aggregate_id,
                version=parked.version - 1,
                parked_version=parked.version,
            )
        else:
            current = session.get(AggregatePosition, aggregate_id)
        if current is None or current.parked_version is None:
            return Outcome.APPLIED
        try:
            outcome = _redrive_in_parts(projector, session, current)
            projector.commit(session)
        except ConcurrentChangeError:
            continue
        return outcome
    raise ConcurrentChangeError(
        f"Redrive of aggregate {aggregate_id} kept meeting concurrent writers; "
        "stop the projection's runners and redrive again."
    )


def _redrive_in_parts(
    projector: Projector, session: Session, current: AggregatePosition
) -> Outcome:
    """Apply a parked aggregate's events from its parked version (not all committed).

    In as many commits as they need; each commit but the last keeps the
    aggregate parked at the next version to apply (:func:`_hold`), so a
    redrive stopped part way is listed, and goes on when run again.
    """
    aggregate_id = current.aggregate_id
    assert current.parked_version is not None  # noqa: S101 - checked by the caller
    parked = session.get(ParkedEvent, aggregate_id)
    # On a total order, later events are the feed's to apply when it gets there.
    up_to = parked.passed_version if parked and session.total_order else None
    try:
        events = projector.load_in_order(aggregate_id, current.version, up_to)
    except PersistenceError:
        raise
    except GapError as error:
        park(
            session,
            current,
            version=current.parked_version,
            topic=parked.topic if parked else "",
            position=None,
            error=error_summary(error, gap_reason(current.parked_version)),
            attempts=1,
        )
        return Outcome.PARKED
    except Exception as error:  # noqa: BLE001 - still cannot be decoded
        park(
            session,
            current,
            version=current.parked_version,
            topic=parked.topic if parked else "",
            position=None,
            error=error_summary(error, " while decoding"),
            attempts=1,
        )
        return Outcome.PARKED
    for event in events:
        savepoint = session.savepoint()
        outcome = projector.apply(session, event, None, redriving=True)
        if session.is_over() and savepoint[0]:
            session.restore(savepoint)
            _hold(session, aggregate_id, event, parked)
            _commit_part(projector, session)
            outcome = projector.apply(session, event, None, redriving=True)
        if outcome is not Outcome.APPLIED:
            return outcome
    return Outcome.APPLIED


def _hold(
    session: Session, aggregate_id: str, event: Any, parked: ParkedEvent | None
) -> None:
    """Keep an aggregate parked at ``event`` while a redrive commits in parts."""
    version = event.originator_version
    if not session.total_order:
        at = session.get(AggregatePosition, aggregate_id)
        assert at is not None  # noqa: S101 - the redrive applied events before
        session.put(at.model_copy(update={"parked_version": version}))
    session.put(
        ParkedEvent(
            aggregate_id=aggregate_id,
            version=version,
            position=None,
            topic=get_topic(type(event)),
            error=(
                f"redrive in progress: versions up to {version - 1} applied; "
                "if no redrive is running, it stopped part way: redrive again"
            ),
            attempts=parked.attempts if parked else 1,
            parked_at=parked.parked_at if parked else datetime.now(UTC),
            passed_version=parked.passed_version if parked else None,
        )
    )


def _commit_part(projector: Projector, session: Session) -> None:
    """Commit part of a redrive: a held aggregate is no newly parked event."""
    # metrics reads dead letters' summaries from this module.
    from ledger.projections.metrics import CommitReport  # noqa: PLC0415

    report = CommitReport.of(session)
    session.commit()
    replace(report, parked=[]).report(projector, logger)


__all__ = ["park", "park_record", "parked", "redrive"]
