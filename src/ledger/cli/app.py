"""The ``ledger`` command's subcommands (typer + rich)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from eventsourcing.application import Application
from eventsourcing.persistence import ProgrammingError
from eventsourcing.utils import Environment, resolve_topic
from rich.console import Console
from rich.table import Table

from ledger.dynamodb import DynamoDBFactory, Meter, schema
from ledger.dynamodb.limits import item_size
from ledger.dynamodb.local import DynamoDBLocal
from ledger.dynamodb.tables import delete_table

DEFAULT_APPLICATION = "aggregates.application:Orders"
"""The application class the commands use unless told otherwise."""

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

cli = typer.Typer(
    name="ledger",
    help="Event sourcing on DynamoDB: run a local DynamoDB, manage tables, "
    "read events, run the demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tables_cli = typer.Typer(help="Create, describe or delete an application's tables.")
events_cli = typer.Typer(help="Read an aggregate's stored events.")
cli.add_typer(tables_cli, name="tables")
cli.add_typer(events_cli, name="events")


@dataclass
class Settings:
    """Options shared by every subcommand."""

    endpoint_url: str | None = None
    table_prefix: str | None = None
    debug: bool = False
    meters: list[Meter] = field(default_factory=list)

    def environment(self, name: str, **extra: str) -> Environment:
        """Return the eventsourcing environment for an application name."""
        env: dict[str, str] = dict(os.environ)
        env["PERSISTENCE_MODULE"] = "ledger.dynamodb"
        if self.endpoint_url:
            env["DYNAMODB_ENDPOINT_URL"] = self.endpoint_url
        if self.table_prefix is not None:
            env["DYNAMODB_TABLE_PREFIX"] = self.table_prefix
        env.update(extra)
        return Environment(name, env)


settings = Settings()


@cli.callback()
def options(
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="DynamoDB endpoint URL (default: $DYNAMODB_ENDPOINT_URL, then "
            "boto3's resolution).",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(help="Table name prefix (default: $DYNAMODB_TABLE_PREFIX)."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on errors.")
    ] = False,
) -> None:
    """Event sourcing on DynamoDB: local server, tables, events, demo."""
    settings.endpoint_url = endpoint
    settings.table_prefix = prefix
    settings.debug = debug


def print_cost(meter: Meter, what: str = "DynamoDB") -> None:
    """Print the round trips and capacity units a command used."""
    console.print(f"[dim]{what}: {meter.summary()}[/dim]")


@contextmanager
def metered(factory: DynamoDBFactory) -> Iterator[Meter]:
    """Meter a command's DynamoDB work and print it at the end."""
    with factory.connection.measure() as meter:
        yield meter
    print_cost(meter)


def run() -> None:
    """Run the CLI, turning errors into one line and a non-zero exit code.

    Usage errors are typer's (exit code 2); any other error is printed as one
    line (exit code 1), or with its traceback under ``--debug``.
    """
    try:
        cli()
    except Exception as error:  # noqa: BLE001 - the CLI's single error boundary
        if settings.debug:
            errors.print_exception()
        else:
            errors.print(
                f"ledger: {type(error).__name__}: {error} (use --debug for details)"
            )
        raise SystemExit(1) from None


# local --------------------------------------------------------------------------------


@cli.command()
def local(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run DynamoDB Local in memory until Ctrl-C (for development only)."""
    server = DynamoDBLocal(port=port)
    server.start()
    console.print(
        f"DynamoDB Local is running at {server.endpoint_url} (in memory; data is lost "
        "on exit).\nIt listens on every network interface: run it only on a machine "
        "you trust.\nUse it with: export DYNAMODB_ENDPOINT_URL="
        f"{server.endpoint_url}\nPress Ctrl-C to stop."
    )
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        console.print("DynamoDB Local stopped.")


# tables -------------------------------------------------------------------------------

AppName = Annotated[
    str, typer.Option("--app", help="Application name (the table name stem).")
]


def _table_kinds() -> list[str]:
    return [
        schema.EVENTS_TABLE,
        schema.SNAPSHOTS_TABLE,
        schema.NOTIFICATIONS_TABLE,
        schema.TRACKING_TABLE,
    ]


@tables_cli.command("create")
def tables_create(app: AppName = "Orders") -> None:
    """Create an application's tables (existing ones are left as they are)."""
    factory = DynamoDBFactory(settings.environment(app, CREATE_TABLE="no"))
    with metered(factory):
        snapshots = factory.aggregate_recorder(schema.SNAPSHOTS_TABLE)
        process = factory.process_recorder()
        for recorder in (snapshots, process):
            recorder.create_table()  # type: ignore[attr-defined]
    for kind in _table_kinds():
        console.print(f"ready: {factory.table_name(kind)}")


@tables_cli.command("describe")
def tables_describe(app: AppName = "Orders") -> None:
    """Show an application's tables: status, items and size."""
    factory = DynamoDBFactory(settings.environment(app, CREATE_TABLE="no"))
    table = Table("table", "status", "items", "bytes", "stream")
    with metered(factory):
        for kind in _table_kinds():
            name = factory.table_name(kind)
            try:
                found = factory.connection.call("describe_table", TableName=name)
            except ProgrammingError:  # no such table: a row, not an error
                table.add_row(name, "missing", "-", "-", "-")
                continue
            info = found["Table"]
            stream = info.get("StreamSpecification", {}).get("StreamViewType", "-")
            table.add_row(
                name,
                info["TableStatus"],
                str(info.get("ItemCount", 0)),
                str(info.get("TableSizeBytes", 0)),
                stream,
            )
    console.print(table)


@tables_cli.command("delete")
def tables_delete(
    app: AppName = "Orders",
    yes: Annotated[
        bool, typer.Option("--yes", help="Delete without asking (all events are lost).")
    ] = False,
) -> None:
    """Delete an application's tables and everything in them."""
    factory = DynamoDBFactory(settings.environment(app, CREATE_TABLE="no"))
    names = [factory.table_name(kind) for kind in _table_kinds()]
    if not yes:
        typer.confirm(f"Delete {', '.join(names)} and every event in them?", abort=True)
    with metered(factory):
        for name in names:
            deleted = delete_table(factory.connection, name)
            console.print(f"{'deleted' if deleted else 'absent '}: {name}")


# events -------------------------------------------------------------------------------


@events_cli.command("show")
def events_show(
    aggregate_id: Annotated[str, typer.Argument(help="The aggregate's id.")],
    application: Annotated[
        str,
        typer.Option(help="The application class, as module:Class."),
    ] = DEFAULT_APPLICATION,
) -> None:
    """Show an aggregate's events, decoded and upcast, with versions, times, sizes."""
    app_class: type[Application[Any]] = resolve_topic(application)
    app = app_class(env=dict(settings.environment(app_class.name, CREATE_TABLE="no")))
    factory = app.factory
    if not isinstance(factory, DynamoDBFactory):
        raise TypeError(f"{application} does not use ledger.dynamodb")
    table = Table("version", "event", "time", "bytes", "fields")
    with metered(factory):
        stored = app.recorder.select_events(aggregate_id)
        for record in stored:
            event = app.mapper.to_domain_event(record)
            fields = _fields(event)
            size = item_size(
                {
                    schema.AGGREGATE_ID: {"S": aggregate_id},
                    schema.VERSION: {"N": str(record.originator_version)},
                    schema.TOPIC: {"S": record.topic},
                    schema.STATE: {"B": record.state},
                }
            )
            table.add_row(
                str(record.originator_version),
                type(event).__qualname__,
                str(getattr(event, "timestamp", "")),
                str(size),
                ", ".join(f"{k}={v}" for k, v in fields.items()),
            )
    if not stored:
        errors.print(f"ledger: no events stored for aggregate {aggregate_id}")
        raise typer.Exit(1)
    console.print(table)


def _fields(event: object) -> dict[str, Any]:
    dump: Callable[[], dict[str, Any]] | None = getattr(event, "model_dump", None)
    values = dump() if dump is not None else dict(vars(event))
    for key in ("originator_id", "originator_version", "timestamp"):
        values.pop(key, None)
    return values


# demo ---------------------------------------------------------------------------------


@cli.command()
def demo(
    use_local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Start DynamoDB Local for the demo on a free port; stop it after.",
        ),
    ] = False,
) -> None:
    """Tell the Order story end to end on DynamoDB, with what each step cost."""
    from ledger.demo import run_demo  # noqa: PLC0415 - needs the example domain

    if use_local:
        with DynamoDBLocal() as server:
            console.print(f"Started DynamoDB Local at {server.endpoint_url}")
            settings.endpoint_url = server.endpoint_url
            run_demo(settings.environment("Orders"), console)
    else:
        run_demo(settings.environment("Orders"), console)


# projections --------------------------------------------------------------------

projections_cli = typer.Typer(
    help="Run, rebuild and inspect projections (read models)."
)
dlq_cli = typer.Typer(
    help="List and redrive a projection's parked (dead-letter) events."
)
cli.add_typer(projections_cli, name="projections")
projections_cli.add_typer(dlq_cli, name="dlq")

KNOWN_PROJECTORS = {"OrderViews": "projections.orders:OrderProjector"}
"""Projection names the command knows without --projector (module:Class)."""

ProjectionName = Annotated[str, typer.Argument(help="The projection's name.")]
ProjectorTopic = Annotated[
    str | None,
    typer.Option(help="The projector class, as module:Class (default: by name)."),
]
ApplicationTopic = Annotated[
    str, typer.Option(help="The application class, as module:Class.")
]


@dataclass
class Projection:
    """A projector, its view, and the application whose events it reads."""

    projector_class: Any
    view: Any
    application: Any

    def projector(self) -> Any:
        """Return a projector on the view that can read the events table."""
        from ledger.projections import event_loader  # noqa: PLC0415

        return self.projector_class(self.view, event_loader(self.application))


def open_projection(name: str, projector: str | None, application: str) -> Projection:
    """Open a projection by name for a command."""
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415

    topic = projector or KNOWN_PROJECTORS.get(name)
    if topic is None:
        raise typer.BadParameter(
            f"unknown projection {name!r}: known are {', '.join(KNOWN_PROJECTORS)}; "
            "or give --projector module:Class"
        )
    projector_class = resolve_topic(topic)
    app_class: type[Application[Any]] = resolve_topic(application)
    app = app_class(env=dict(settings.environment(app_class.name)))
    view = open_view(projector_class, dict(settings.environment(projector_class.name)))
    return Projection(projector_class, view, app)


def _meter_projection(projection: Projection) -> Any:
    return projection.view.connection.measure()


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

    projection = open_projection(name, projector, application)
    with _meter_projection(projection) as meter:
        found = status(projection.view, projection.application)
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
    console.print(table)
    print_cost(meter)


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
    if feed not in ("stream", "sequence"):
        raise typer.BadParameter("--feed is 'stream' or 'sequence'")
    projection = open_projection(name, projector, application)
    feeder = projection.projector()
    with _meter_projection(projection) as meter:
        try:
            while True:
                applied = (
                    _poll_stream(projection, feeder)
                    if feed == "stream"
                    else _catch_up(projection, feeder)
                )
                console.print(f"processed {applied} events from the {feed}")
                if once:
                    break
                if applied == 0:
                    threading.Event().wait(1.0)
        except KeyboardInterrupt:
            console.print("stopped")
    print_cost(meter)


def _poll_stream(projection: Projection, feeder: Any) -> int:
    from ledger.projections.streams import StreamPoller  # noqa: PLC0415

    poller = projection.__dict__.setdefault(
        "poller", StreamPoller(feeder, projection.application)
    )
    return int(poller.poll())


def _catch_up(projection: Projection, feeder: Any) -> int:
    from eventsourcing.persistence import Tracking  # noqa: PLC0415

    from ledger.projections import Session  # noqa: PLC0415

    app = projection.application
    position = projection.view.max_tracking_id(app.name) or 0
    notifications = app.recorder.select_notifications(start=position + 1, limit=1000)
    events = [
        (app.mapper.to_domain_event(n), Tracking(app.name, n.id)) for n in notifications
    ]
    return int(feeder.apply_batch(Session(projection.view), events))


@projections_cli.command("rebuild")
def projections_rebuild(
    name: ProjectionName = "OrderViews",
    projector: ProjectorTopic = None,
    application: ApplicationTopic = DEFAULT_APPLICATION,
) -> None:
    """Rebuild a read model from history into a new version, then switch readers."""
    from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

    from ledger.projections.rebuild import rebuild  # noqa: PLC0415

    projection = open_projection(name, projector, application)
    columns = (
        TextColumn("rebuilding v{task.fields[version]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} positions"),
        TextColumn("{task.fields[rate]:.0f} events/s"),
    )
    with (
        _meter_projection(projection) as meter,
        Progress(*columns, console=console) as bar,
    ):
        task = bar.add_task("rebuild", total=None, version="?", rate=0.0)

        def show(progress: Any) -> None:
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
        f"{'readers switched to it' if result.switched else 'not switched'}; the old "
        "version is kept until dropped"
    )
    print_cost(meter)


@dlq_cli.command("list")
def dlq_list(
    name: ProjectionName = "OrderViews",
    projector: ProjectorTopic = None,
    application: ApplicationTopic = DEFAULT_APPLICATION,
) -> None:
    """List a projection's parked events with their errors."""
    projection = open_projection(name, projector, application)
    with _meter_projection(projection) as meter:
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
    print_cost(meter)


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
    with _meter_projection(projection) as meter:
        outcomes = projection.projector().redrive(aggregate)
    for aggregate_id, outcome in outcomes.items():
        console.print(f"{aggregate_id}: {outcome.value}")
    if not outcomes:
        console.print("no parked events")
    print_cost(meter)
    if any(outcome.value == "parked" for outcome in outcomes.values()):
        raise typer.Exit(1)


# bench --------------------------------------------------------------------------

bench_cli = typer.Typer(help="Run the benchmarks in benchmarks/ (from a checkout).")
cli.add_typer(bench_cli, name="bench")
QuickOption = Annotated[
    bool, typer.Option("--quick", help="The short version of the benchmark.")
]


def _run_benchmark(script: str, arguments: list[str]) -> None:
    path = Path.cwd() / "benchmarks" / script
    if not path.is_file():
        raise typer.BadParameter(
            f"{path} not found: run `ledger bench` from a ledger checkout"
        )
    if settings.endpoint_url:
        arguments = [*arguments, "--endpoint", settings.endpoint_url]
    completed = subprocess.run(  # noqa: S603 - our own script, fixed argv
        [sys.executable, str(path), *arguments], check=False
    )
    raise typer.Exit(completed.returncode)


@bench_cli.command("append")
def bench_append(quick: QuickOption = False) -> None:
    """Time appends and loads beside raw boto3 (benchmarks/bench_store.py)."""
    _run_benchmark("bench_store.py", ["--repeat", "10" if quick else "50"])


@bench_cli.command("snapshots")
def bench_snapshots(quick: QuickOption = False) -> None:
    """Compare snapshot strategies over long histories (bench_snapshots.py)."""
    _run_benchmark("bench_snapshots.py", ["--quick"] if quick else [])


@bench_cli.command("rebuild")
def bench_rebuild(quick: QuickOption = False) -> None:
    """Time a projection rebuild beside raw reads and writes (bench_projections.py)."""
    _run_benchmark("bench_projections.py", ["--quick"] if quick else [])
