"""``ledger projections``: run, rebuild and inspect projections; ``dlq`` redrives."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ledger.cli.options import (
    JsonOutput,
    ProjectionName,
    console,
    errors,
    metered,
    output_table,
    print_json,
    settings,
)

if TYPE_CHECKING:
    from eventsourcing.application import Application

    from ledger.feeds import Polling
    from ledger.projections import DynamoDBView, Projector
    from ledger.projections.rebuild import ProjectionStatus

projections_cli = typer.Typer(
    help="Run, rebuild and inspect projections (read models)."
)
dlq_cli = typer.Typer(
    help="List and redrive a projection's parked (dead-letter) events."
)
projections_cli.add_typer(dlq_cli, name="dlq")

ONCE_PATIENCE = 600.0
"""Seconds `run --once` waits in all while DynamoDB is unavailable, then fails."""


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


def open_projection(name: str, *, read_only: bool = False) -> Projection:
    """Open a projection by name for a command.

    The application's tables are never created: they must exist (a typo in
    ``--prefix`` or a wrong region is an error naming the missing table, not
    a new empty store a projection reads nothing from). ``read_only``: create
    the projection's tables neither.
    """
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415

    project = settings.project()
    projector_class = project.projector_class(name)
    app = settings.application(CREATE_TABLE="no")
    _check_events_table(app)
    extra = {"CREATE_TABLE": "no"} if read_only else {}
    view = open_view(
        projector_class, dict(settings.environment(projector_class.name, **extra))
    )
    return Projection(projector_class, view, app)


def _check_events_table(app: Application[Any]) -> None:
    """Raise ``ProgrammingError`` naming the events table if it does not exist.

    One DescribeTable (no capacity units), before any projection table is made.
    """
    from eventsourcing.persistence import ProgrammingError  # noqa: PLC0415

    from ledger.dynamodb import TableNotFoundError  # noqa: PLC0415

    recorder: Any = app.recorder
    table = recorder.events_table_name
    try:
        recorder.connection.call("describe_table", TableName=table)
    except TableNotFoundError as error:
        raise ProgrammingError(
            f"Table {table} (the events of application {app.name}) does not "
            "exist, so there is nothing to project; no table was created. Check "
            "--prefix (or DYNAMODB_TABLE_PREFIX), --endpoint and DYNAMODB_REGION; "
            "if the application has not run yet, create its tables with "
            "`ledger tables create`."
        ) from error


@projections_cli.command("list")
def projections_list(as_json: JsonOutput = False) -> None:
    """List the projections found (see `ledger --help` for where), with classes."""
    project = settings.project()
    if project.app is not None:
        project.application_class()  # refuses a name that is not an application
    found = {
        name: f"{cls.__module__}:{cls.__qualname__}"
        for name, cls in project.projector_classes().items()
    }
    if as_json:
        print_json({"app": project.app, "projections": found})
        return
    table = output_table("projection", "projector")
    for name, topic in found.items():
        table.add_row(name, topic)
    console.print(table if found else "no projectors found")
    console.print(f"application: {project.app or '-'} (from {project.source})")


@projections_cli.command("status")
def projections_status(name: ProjectionName, as_json: JsonOutput = False) -> None:
    """Show a projection's versions, position, lag and parked events."""
    from ledger.projections.rebuild import status  # noqa: PLC0415

    projection = open_projection(name, read_only=True)
    with metered(projection.view, to_stderr=as_json):
        found = status(projection.view, projection.application)
    if as_json:
        print_json({**dataclasses.asdict(found), "lag": found.lag})
    else:
        console.print(_status_table(found))


def _status_table(found: ProjectionStatus) -> Table:
    """Return a projection's status as a table of one row."""
    table = output_table(
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
    name: ProjectionName,
    feed: Annotated[
        str | None,
        typer.Option(
            help="'stream' (the events table's DynamoDB stream) or 'sequence' "
            "(the application sequence). Default: the application's "
            "DYNAMODB_ORDERING, which `status` follows too.",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Process what is there now, then stop.")
    ] = False,
) -> None:
    """Keep a projection up to date until Ctrl-C (or once, with --once).

    Events whose handler keeps failing, and events that cannot be decoded,
    are parked as dead letters (see `dlq list`); others go on. With --once,
    it says how many it parked and exits with code 1 if it parked any. While
    DynamoDB is unavailable it waits and tries again (with --once, for up to
    10 minutes of waiting in all, then fails). On the sequence feed,
    a notification batch that cannot be read stops it at that position until
    `skip-batch` is run.
    """
    from ledger.feeds import StoppedShortError  # noqa: PLC0415
    from ledger.projections.streams import run_polls  # noqa: PLC0415

    if feed not in (None, "stream", "sequence"):
        raise typer.BadParameter("--feed is 'stream' or 'sequence'")
    projection = open_projection(name)
    if feed is None:
        feed = str(getattr(projection.application.recorder, "ordering", "sequence"))
    with metered(projection.view):
        feeding, blocked = _feed(projection, feed)
        # A poll whose consumer failed records raises, so that run_polls
        # waits longer each time rather than polling again every interval.
        poll = feeding.checked_poll
        if once:
            parked_before = len(projection.view.parked_items())
            total = feeding.drain(patience=ONCE_PATIENCE)
            console.print(f"processed {total} events from the {feed}")
            parked = len(projection.view.parked_items()) - parked_before
            stopped = blocked()
            if parked > 0:
                errors.print(
                    f"ledger: {parked} event{'s were' if parked > 1 else ' was'} "
                    f"parked: see `ledger projections dlq list {name}`, fix the "
                    f"cause, then `ledger projections dlq redrive {name}`.",
                    soft_wrap=True,
                )
            if stopped is not None:
                errors.print(f"ledger: {stopped}")
            if parked > 0 or stopped is not None:
                raise typer.Exit(1)
            return
        total = 0
        with console.status(f"{name}: following the {feed}") as line:

            def poll_and_show() -> int:
                nonlocal total
                before = blocked()
                try:
                    applied = poll()
                except StoppedShortError as short:
                    # What it applied before stopping short is processed too.
                    total += short.found
                    line.update(f"{name}: {total} events processed from the {feed}")
                    raise
                total += applied
                stopped = blocked()
                # Said once per batch: a feed stopped there reports it anew
                # at every poll.
                if stopped is not None and str(stopped) != str(before):
                    errors.print(f"ledger: {stopped}")
                line.update(
                    f"{name}: {total} events processed from the {feed}"
                    + (" (stopped: see above)" if stopped is not None else "")
                )
                return applied

            with contextlib.suppress(KeyboardInterrupt):
                run_polls(
                    poll_and_show,
                    threading.Event(),
                    on_unavailable=lambda error, wait: line.update(
                        f"{name}: DynamoDB unavailable ({type(error).__name__}); "
                        f"trying again in {wait:.0f}s"
                    ),
                )
        console.print(f"stopped; processed {total} events from the {feed}")


def _feed(
    projection: Projection, feed: str
) -> tuple[Polling, Callable[[], Exception | None]]:
    """Return a feed and what tells why the feed is stopped, if it is.

    Its poll applies the events the feed has now and returns how many.
    """
    projector = projection.projector()
    if feed == "stream":
        from ledger.projections.streams import StreamPoller  # noqa: PLC0415

        return StreamPoller(projector, projection.application), lambda: None
    from ledger.projections.sequence import SequenceFeed  # noqa: PLC0415

    sequence = SequenceFeed(projector, projection.application)
    return sequence.runner, lambda: sequence.blocked


@projections_cli.command("skip-batch")
def projections_skip_batch(
    name: ProjectionName,
    position: Annotated[
        int,
        typer.Option(
            help="The position the projection is stopped at (its position + 1)."
        ),
    ] = ...,  # type: ignore[assignment]
) -> None:
    """Go past a notification batch that cannot be read, on the sequence feed.

    Applies the batch's events from the events table instead (a Scan of the
    whole events table: it costs the table's size in read units), then moves
    the projection's position to the batch's end. Refuses a readable batch.
    On an indexed application it also reads the whole index (the
    notifications table's size in read units) to tell the batch's events
    from the others, and waits up to 60 s for events saved meanwhile to be
    indexed: an indexer must be running. It refuses, applying nothing, when
    it cannot tell the batch's events apart: another batch unreadable, events
    missing or not yet indexed, a re-index under way, or the projection
    already inside the batch (restore the batch, or rebuild).
    """
    from ledger.projections.sequence import SequenceFeed  # noqa: PLC0415

    projection = open_projection(name)
    with metered(projection.view):
        sequence = SequenceFeed(projection.projector(), projection.application)
        applied = sequence.skip_batch(position)
        console.print(
            f"skipped the batch at position {position}: applied {applied} events "
            f"from the events table; {name} is now at position {sequence.position}"
        )


@projections_cli.command("rebuild")
def projections_rebuild(
    name: ProjectionName,
    source: Annotated[
        str | None,
        typer.Option(
            help="Read 'sequence' (the application sequence) or 'scan' (the events "
            "table, in parallel). Default: the sequence if the application keeps one."
        ),
    ] = None,
) -> None:
    """Rebuild a read model from history into a new version, then switch readers.

    Resumes an unfinished rebuild. While DynamoDB is unavailable it waits and
    resumes (up to 10 minutes of waiting in all).
    """
    from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

    from ledger.projections.history import (  # noqa: PLC0415
        History,
        ScanHistory,
        SequenceHistory,
    )
    from ledger.projections.rebuild import RebuildProgress, rebuild  # noqa: PLC0415

    if source not in (None, "sequence", "scan"):
        raise typer.BadParameter("--source is 'sequence' or 'scan'")
    projection = open_projection(name)
    history: History | None = None
    if source == "scan":
        history = ScanHistory(projection.application)
    elif source == "sequence":
        history = SequenceHistory(projection.application)
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
                history=history,
                on_unavailable=lambda error, wait: bar.console.print(
                    f"DynamoDB unavailable ({type(error).__name__}); "
                    f"resuming in {wait:.0f}s"
                ),
            )
        console.print(
            f"rebuilt {name} as v{result.table_version}: {result.events} events in "
            f"{result.seconds:.1f}s ({result.events_per_second:.0f} events/s); "
            f"{'readers switched to it' if result.switched else 'not switched'}; "
            "the old version is kept until dropped (`ledger projections "
            f"drop-version {name} VERSION`)"
        )


@projections_cli.command("drop-version")
def projections_drop_version(
    name: ProjectionName,
    version: Annotated[
        int, typer.Argument(help="The table version to drop (see `status`).")
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Drop without asking.")] = False,
) -> None:
    """Delete an old table version of a read model, and its parked events.

    Refuses the active version, the one being rebuilt, and the one a rebuild
    still reads. A dropped version can be built again with `rebuild`.
    """
    from ledger.projections.rebuild import drop_version  # noqa: PLC0415

    projection = open_projection(name, read_only=True)
    if not yes:
        typer.confirm(f"Drop v{version} of {name} and its parked events?", abort=True)
    with metered(projection.view):
        dropped = drop_version(projection.view, version)
    console.print(
        f"dropped v{version} of {name}"
        if dropped
        else f"{name} has no v{version}: nothing dropped"
    )


@dlq_cli.command("list")
def dlq_list(name: ProjectionName, as_json: JsonOutput = False) -> None:
    """List a projection's parked events with their errors (full aggregate ids)."""
    projection = open_projection(name, read_only=True)
    with metered(projection.view, to_stderr=as_json):
        parked = projection.projector().parked()
    if as_json:
        print_json([event.model_dump(mode="json") for event in parked])
        return
    table = output_table("version", "position", "event", "attempts", "error")
    table.add_column("aggregate", no_wrap=True, min_width=36)
    for event in parked:
        table.add_row(
            str(event.version),
            str(event.position),
            event.topic.rsplit(".", 1)[-1],
            str(event.attempts),
            event.error,
            event.aggregate_id,
        )
    console.print(table if parked else "no parked events")


@dlq_cli.command("redrive")
def dlq_redrive(
    name: ProjectionName,
    aggregate: Annotated[
        str | None, typer.Option(help="Redrive one aggregate only.")
    ] = None,
) -> None:
    """Apply parked events again (after the fix), then those that waited."""
    projection = open_projection(name)
    with metered(projection.view):
        outcomes = projection.projector().redrive(aggregate)
        for aggregate_id, outcome in outcomes.items():
            console.print(f"{aggregate_id}: {outcome.value}")
        if not outcomes:
            console.print("no parked events")
    if any(outcome.value == "parked" for outcome in outcomes.values()):
        raise typer.Exit(1)
