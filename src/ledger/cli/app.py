"""The ``ledger`` command's subcommands (typer + rich)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
