"""``ledger projections``: run, rebuild and inspect projections; ``dlq`` redrives."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer
from eventsourcing.utils import resolve_topic
from rich.table import Table

from ledger.cli.options import (
    DEFAULT_APPLICATION,
    ApplicationTopic,
    ProjectionName,
    ProjectorTopic,
    console,
    metered,
    settings,
)

if TYPE_CHECKING:
    from eventsourcing.application import Application

    from ledger.projections import DynamoDBView, Projector
    from ledger.projections.rebuild import ProjectionStatus

projections_cli = typer.Typer(
    help="Run, rebuild and inspect projections (read models)."
)
dlq_cli = typer.Typer(
    help="List and redrive a projection's parked (dead-letter) events."
)
projections_cli.add_typer(dlq_cli, name="dlq")

KNOWN_PROJECTORS = {"OrderViews": "projections.orders:OrderProjector"}
"""Projection names the command knows without --projector (module:Class)."""


@dataclass
class Projection:
    """A projector, its view, and the application whose events it reads."""

    projector_class: type[Projector]
    view: DynamoDBView
    application: Application[Any]

    def projector(self) -> Projector:
        """Return a projector on the view that can read the events table."""
        from ledger.projections import event_loader  # noqa: PLC0415

        return self.projector_class(self.view, event_loader(self.application))


def open_projection(
    name: str, projector: str | None, application: str, *, read_only: bool = False
) -> Projection:
    """Open a projection by name for a command.

    ``read_only``: create no tables (a wrong region or prefix is then an
    error naming the missing table, not a new empty store).
    """
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415

    topic = projector or KNOWN_PROJECTORS.get(name)
    if topic is None:
        raise typer.BadParameter(
            f"unknown projection {name!r}: known are {', '.join(KNOWN_PROJECTORS)}; "
            "or give --projector module:Class"
        )
    projector_class = resolve_topic(topic)
    extra = {"CREATE_TABLE": "no"} if read_only else {}
    app = settings.application(application, **extra)
    view = open_view(
        projector_class, dict(settings.environment(projector_class.name, **extra))
    )
    return Projection(projector_class, view, app)


@projections_cli.command("list")
def projections_list() -> None:
    """List the projections this command knows, with their projector classes."""
    table = Table("projection", "projector")
    for name, topic in KNOWN_PROJECTORS.items():
        table.add_row(name, topic)
    console.print(table)


@projections_cli.command("status")
def projections_status(
    name: ProjectionName = "OrderViews",
    projector: ProjectorTopic = None,
    application: ApplicationTopic = DEFAULT_APPLICATION,
) -> None:
    """Show a projection's versions, position, lag and parked events."""
    from ledger.projections.rebuild import status  # noqa: PLC0415

    projection = open_projection(name, projector, application, read_only=True)
    with metered(projection.view):
        console.print(_status_table(status(projection.view, projection.application)))


def _status_table(found: ProjectionStatus) -> Table:
    """Return a projection's status as a table of one row."""
    table = Table(
        "projection", "active", "versions", "rebuilding", "position", "lag", "parked"
    )
    table.add_row(
        found.name,
        f"v{found.active_version}",
        ", ".join(f"v{v}" for v in found.versions),
        "-" if found.rebuilding_version is None else f"v{found.rebuilding_version}",
        str(found.position or 0),
        "-" if found.lag is None else str(found.lag),
        str(found.parked),
    )
    return table


@projections_cli.command("run")
def projections_run(
    name: ProjectionName = "OrderViews",
    projector: ProjectorTopic = None,
    application: ApplicationTopic = DEFAULT_APPLICATION,
    feed: Annotated[
        str,
        typer.Option(
            help="'stream' (the events table's DynamoDB stream) or 'sequence'."
        ),
    ] = "stream",
    once: Annotated[
        bool, typer.Option("--once", help="Process what is there now, then stop.")
    ] = False,
) -> None:
    """Keep a projection up to date until Ctrl-C (or once, with --once).

    Events whose handler keeps failing, and stream records that cannot be
    decoded, are parked as dead letters (see `dlq list`); others go on.
    """
    from ledger.projections.streams import run_polls  # noqa: PLC0415

    if feed not in ("stream", "sequence"):
        raise typer.BadParameter("--feed is 'stream' or 'sequence'")
    projection = open_projection(name, projector, application)
    with metered(projection.view):
        try:
            process_available = _feed(projection, feed)

            def process_and_say() -> int:
                applied = process_available()
                console.print(f"processed {applied} events from the {feed}")
                return applied

            if once:
                process_and_say()
            else:
                run_polls(
                    process_and_say,
                    threading.Event(),
                    on_unavailable=lambda error, wait: console.print(
                        f"DynamoDB unavailable ({type(error).__name__}); "
                        f"trying again in {wait:.0f}s"
                    ),
                )
        except KeyboardInterrupt:
            console.print("stopped")


def _feed(projection: Projection, feed: str) -> Callable[[], int]:
    """Return what applies the events a feed has now; it returns how many."""
    projector = projection.projector()
    if feed == "stream":
        from ledger.projections.streams import StreamPoller  # noqa: PLC0415

        return StreamPoller(projector, projection.application).poll
    return partial(_apply_next_page, projection, projector)


def _apply_next_page(projection: Projection, projector: Projector) -> int:
    """Apply the sequence's next page after the view's position; return how many.

    Not eventsourcing's ``ProjectionRunner``: that applies one event per
    commit in a thread of its own; this applies a page in full commits.
    """
    from eventsourcing.persistence import Tracking  # noqa: PLC0415

    from ledger.projections import (  # noqa: PLC0415
        ActiveVersionChangedError,
        ConcurrentChangeError,
        Session,
    )
    from ledger.projections.history import (  # noqa: PLC0415
        DEFAULT_PAGE_SIZE,
        decode,
    )

    app = projection.application
    position = projection.view.max_tracking_id(app.name) or 0
    notifications = app.recorder.select_notifications(
        start=position + 1, limit=DEFAULT_PAGE_SIZE
    )
    # An event that cannot be decoded is parked by the projector, not raised.
    events = [(decode(app.mapper, n), Tracking(app.name, n.id)) for n in notifications]
    try:
        return projector.apply_batch(Session(projection.view), events)
    except ActiveVersionChangedError:
        projection.view.follow_active()  # a rebuild switched: go on from there
    except ConcurrentChangeError:
        pass  # another writer got in first: read again from the position
    return 0


@projections_cli.command("rebuild")
def projections_rebuild(
    name: ProjectionName = "OrderViews",
    projector: ProjectorTopic = None,
    application: ApplicationTopic = DEFAULT_APPLICATION,
) -> None:
    """Rebuild a read model from history into a new version, then switch readers."""
    from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

    from ledger.projections.rebuild import RebuildProgress, rebuild  # noqa: PLC0415

    projection = open_projection(name, projector, application)
    columns = (
        TextColumn("rebuilding v{task.fields[version]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} positions"),
        TextColumn("{task.fields[rate]:.0f} events/s"),
    )
    with metered(projection.view):
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("rebuild", total=None, version="?", rate=0.0)

            def show(progress: RebuildProgress) -> None:
                bar.update(
                    task,
                    completed=progress.position,
                    total=progress.head,
                    version=progress.table_version,
                    rate=progress.events_per_second,
                )

            result = rebuild(
                projection.application,
                projection.projector_class,
                projection.view,
                progress=show,
            )
        console.print(
            f"rebuilt {name} as v{result.table_version}: {result.events} events in "
            f"{result.seconds:.1f}s ({result.events_per_second:.0f} events/s); "
            f"{'readers switched to it' if result.switched else 'not switched'}; "
            "the old version is kept until dropped"
        )


@dlq_cli.command("list")
def dlq_list(
    name: ProjectionName = "OrderViews",
    projector: ProjectorTopic = None,
    application: ApplicationTopic = DEFAULT_APPLICATION,
) -> None:
    """List a projection's parked events with their errors."""
    projection = open_projection(name, projector, application, read_only=True)
    with metered(projection.view):
        parked = projection.projector().parked()
        table = Table("aggregate", "version", "position", "event", "attempts", "error")
        for event in parked:
            table.add_row(
                event.aggregate_id,
                str(event.version),
                str(event.position),
                event.topic.rsplit(".", 1)[-1],
                str(event.attempts),
                event.error,
            )
        console.print(table if parked else "no parked events")


@dlq_cli.command("redrive")
def dlq_redrive(
    name: ProjectionName = "OrderViews",
    projector: ProjectorTopic = None,
    application: ApplicationTopic = DEFAULT_APPLICATION,
    aggregate: Annotated[
        str | None, typer.Option(help="Redrive one aggregate only.")
    ] = None,
) -> None:
    """Apply parked events again (after the fix), then those that waited."""
    projection = open_projection(name, projector, application)
    with metered(projection.view):
        outcomes = projection.projector().redrive(aggregate)
        for aggregate_id, outcome in outcomes.items():
            console.print(f"{aggregate_id}: {outcome.value}")
        if not outcomes:
            console.print("no parked events")
    if any(outcome.value == "parked" for outcome in outcomes.values()):
        raise typer.Exit(1)
