"""Rebuilding a read model blue/green, its status, and dropping old versions.

A rebuild builds the read model afresh into a NEW table version while readers
and runners keep using the active one, catches up, then switches the
``active`` pointer in one conditional write; runners notice at their next
commit (each commit checks the pointer) and move over. The old version is
kept until :func:`drop_version`.

Source: the application sequence, not a Scan of the events table. The
sequence gives every event in commit order, so cross-aggregate read models
(a customer's orders) are built exactly as the live feed builds them; its
position is the rebuild's checkpoint, committed with every write, so a
crashed rebuild resumes where it stopped; and catching up is reading on from
that position. Notification batches carry the events' states inline, so
reading the sequence costs about what scanning the events table costs
(``benchmarks/bench_projections.py`` measures both).

While rebuilding, the new table has one writer, so the rebuild keeps the read
model in memory (loaded once, by one Scan, when resuming) and commits up to
``max_actions`` items per transaction, each holding its tracking. Being the
one writer is enforced by an owner token on the ``rebuild`` control item,
checked in every commit, instead of a revision check on every item (which
costs DynamoDB several times more); the next page of the sequence is read
while the current one is written.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import IntegrityError, ProgrammingError, Tracking

from ledger.dynamodb.tables import delete_table
from ledger.projections import schema
from ledger.projections.dynamodb import DynamoDBView
from ledger.projections.projector import Projector, Session, event_loader
from ledger.projections.views import ConcurrentChangeError

DEFAULT_PAGE_SIZE = 1000
"""Notifications read per request while rebuilding."""


@dataclass(frozen=True)
class RebuildProgress:
    """How far a rebuild is: for a progress bar."""

    table_version: int
    events_done: int
    """Events applied by this run (a resumed run counts from where it resumed)."""
    position: int
    """The last position of the application sequence applied."""
    head: int
    """The last position of the application sequence when the run looked."""
    events_per_second: float


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild did."""

    table_version: int
    events: int
    seconds: float
    switched: bool

    @property
    def events_per_second(self) -> float:
        """Throughput of this run."""
        return self.events / self.seconds if self.seconds else 0.0


def rebuild(
    application: Any,
    projector_class: type[Projector],
    view: DynamoDBView,
    *,
    progress: Callable[[RebuildProgress], None] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    switch: bool = True,
) -> RebuildResult:
    """Build a projection's read model afresh from history, then switch readers.

    Resumes the rebuild in progress if there is one (after a crash), else
    starts a new table version. ``switch=False`` leaves the new version built
    but inactive (switch later with :func:`switch_version`).
    """
    target = _start_or_resume(view)
    target_view = view.at_version(target)
    target_view.create_version_table(target)
    target_view.rebuild_owner = _take_over(view, target)
    projector = projector_class(target_view, event_loader(application))
    session = Session(target_view)
    session.load_everything()
    started = time.monotonic()
    done = 0
    position = target_view.max_tracking_id(application.name) or 0
    head = application.recorder.max_notification_id() or 0

    def count(events: int) -> None:
        nonlocal done
        done += events

    def read_from(start: int) -> Any:
        return application.recorder.select_notifications(start=start, limit=page_size)

    # Read the next page while the current one is applied and written.
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(read_from, position + 1)
        while notifications := upcoming.result():
            upcoming = reader.submit(read_from, notifications[-1].id + 1)
            events = [
                (
                    application.mapper.to_domain_event(notification),
                    Tracking(application.name, notification.id),
                )
                for notification in notifications
            ]
            projector.apply_batch(session, events, on_commit=count)
            position = notifications[-1].id
            head = max(head, position)
            if progress is not None:
                elapsed = time.monotonic() - started
                progress(
                    RebuildProgress(
                        target, done, position, head, done / elapsed if elapsed else 0
                    )
                )
    # From here on other writers may write the version: check revisions again.
    target_view.rebuild_owner = None
    switched = False
    if switch:
        switch_version(view, target)
        switched = True
        _catch_up_after_switch(application, projector, position, page_size)
    return RebuildResult(target, done, time.monotonic() - started, switched)


def _start_or_resume(view: DynamoDBView) -> int:
    view.create_table()
    in_progress = view.get_control(schema.REBUILD)
    if in_progress is not None:
        return int(in_progress[schema.TABLE_VERSION]["N"])
    target = max([view.active_version(), *view.existing_versions()]) + 1
    try:
        view.connection.call(
            "put_item",
            TableName=view.control_table_name,
            Item={
                schema.NAME: {"S": schema.REBUILD},
                schema.TABLE_VERSION: {"N": str(target)},
                schema.STARTED_AT: {"S": datetime.now(UTC).isoformat()},
            },
            ConditionExpression="attribute_not_exists(#n)",
            ExpressionAttributeNames={"#n": schema.NAME},
        )
    except IntegrityError:
        # Another rebuild started at the same moment: join it.
        return _start_or_resume(view)
    return target


def _take_over(view: DynamoDBView, target: int) -> str:
    """Make this run the one owner of the rebuild of ``target``; return its token.

    A run that crashed, or was left behind, can no longer commit to it.
    """
    owner = uuid.uuid4().hex
    view.connection.call(
        "update_item",
        TableName=view.control_table_name,
        Key={schema.NAME: {"S": schema.REBUILD}},
        UpdateExpression="SET #o = :o",
        ConditionExpression="#v = :v",
        ExpressionAttributeNames={"#o": schema.OWNER, "#v": schema.TABLE_VERSION},
        ExpressionAttributeValues={
            ":o": {"S": owner},
            ":v": {"N": str(target)},
        },
    )
    return owner


def switch_version(view: DynamoDBView, version: int) -> None:
    """Make ``version`` the one readers use, in one conditional transaction.

    Also ends the rebuild in progress, if it built that version.
    """
    active = view.active_version()
    actions: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": view.control_table_name,
                "Key": {schema.NAME: {"S": schema.ACTIVE}},
                "UpdateExpression": "SET #v = :new",
                "ConditionExpression": "#v = :old",
                "ExpressionAttributeNames": {"#v": schema.TABLE_VERSION},
                "ExpressionAttributeValues": {
                    ":new": {"N": str(version)},
                    ":old": {"N": str(active)},
                },
            }
        }
    ]
    in_progress = view.get_control(schema.REBUILD)
    if (
        in_progress is not None
        and int(in_progress[schema.TABLE_VERSION]["N"]) == version
    ):
        actions.append(
            {
                "Delete": {
                    "TableName": view.control_table_name,
                    "Key": {schema.NAME: {"S": schema.REBUILD}},
                }
            }
        )
    view.connection.call("transact_write_items", TransactItems=actions)
    view.follow_active()


def _catch_up_after_switch(
    application: Any, projector: Projector, position: int, page_size: int
) -> None:
    """Apply events committed while switching, unless a live runner already did.

    Other writers may now write the version, so this reads before it writes.
    """
    session = Session(projector.view)
    while True:
        notifications = application.recorder.select_notifications(
            start=position + 1, limit=page_size
        )
        if not notifications:
            return
        events = [
            (application.mapper.to_domain_event(n), Tracking(application.name, n.id))
            for n in notifications
        ]
        try:
            projector.apply_batch(session, events)
        except ConcurrentChangeError:
            return  # a live runner is ahead of this pass: it owns the version now
        position = notifications[-1].id


def drop_version(view: DynamoDBView, version: int) -> bool:
    """Delete an old table version; refuse the active one or one being built."""
    in_progress = view.get_control(schema.REBUILD)
    building = (
        None if in_progress is None else int(in_progress[schema.TABLE_VERSION]["N"])
    )
    if version in (view.active_version(), building):
        raise ProgrammingError(
            f"Table version {version} of {view.base_name} is active or being "
            "rebuilt, so it cannot be dropped. Switch to another version first."
        )
    return delete_table(view.connection, view.version_table_name(version))


@dataclass(frozen=True)
class ProjectionStatus:
    """Where a projection is: versions, position, lag and dead letters."""

    name: str
    active_version: int
    versions: list[int]
    rebuilding_version: int | None
    position: int | None
    """The application sequence position the active version has applied."""
    head: int | None
    """The application sequence's last position."""
    parked: int

    @property
    def lag(self) -> int | None:
        """Events behind the application sequence (None when it is not known)."""
        if self.head is None:
            return None
        return self.head - (self.position or 0)


def status(view: DynamoDBView, application: Any = None) -> ProjectionStatus:
    """Return a projection's status; with ``application``, its position and lag."""
    view.follow_active()
    in_progress = view.get_control(schema.REBUILD)
    position = head = None
    if application is not None:
        position = view.max_tracking_id(application.name)
        head = application.recorder.max_notification_id()
    try:
        parked = len(view.parked_items())
    except ProgrammingError:
        parked = 0
    return ProjectionStatus(
        name=view.base_name,
        active_version=view.table_version,
        versions=view.existing_versions(),
        rebuilding_version=(
            None if in_progress is None else int(in_progress[schema.TABLE_VERSION]["N"])
        ),
        position=position,
        head=head,
        parked=parked,
    )
