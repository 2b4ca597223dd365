"""The root ``ledger`` command: its global options and its command groups."""

from __future__ import annotations

from typing import Annotated

import typer

from ledger import DISTRIBUTION, __version__
from ledger.cli.bench import bench_cli, checkout_root
from ledger.cli.events import events_cli
from ledger.cli.inbox import inbox_cli, publisher_cli
from ledger.cli.index import index_cli
from ledger.cli.local import local
from ledger.cli.options import run_with_one_line_errors, settings
from ledger.cli.projections import projections_cli
from ledger.cli.sagas import sagas_cli
from ledger.cli.tables import tables_cli

cli = typer.Typer(
    name="ledger",
    help="Event sourcing on DynamoDB: run a local DynamoDB, manage tables, "
    "read events, run and rebuild projections, redrive parked sagas.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich markup would swallow "[tool.ledger]" and show flags
    # as "--debug <bool>".
    rich_markup_mode=None,
)
# Help lists the commands in the order they are registered here.
cli.command("local")(local)
cli.add_typer(tables_cli, name="tables")
cli.add_typer(events_cli, name="events")
cli.add_typer(index_cli, name="index")
cli.add_typer(projections_cli, name="projections")
cli.add_typer(sagas_cli, name="sagas")
cli.add_typer(inbox_cli, name="inbox")
cli.add_typer(publisher_cli, name="publisher")
# Listed only in a checkout: the benchmarks are not in the wheel.
cli.add_typer(bench_cli, name="bench", hidden=checkout_root() is None)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"{DISTRIBUTION} {__version__}")
        raise typer.Exit


@cli.callback()
def options(  # noqa: PLR0917 - typer passes the root options positionally
    endpoint: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="DynamoDB endpoint URL (default: $DYNAMODB_ENDPOINT_URL, then "
            "boto3's resolution).",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            metavar="PREFIX",
            help="Table name prefix (default: $DYNAMODB_TABLE_PREFIX).",
        ),
    ] = None,
    app: Annotated[
        str | None,
        typer.Option(
            metavar="MODULE:CLASS",
            help="Your application class, as module:Class (default: $LEDGER_APP, "
            "then [tool.ledger] app in pyproject.toml).",
        ),
    ] = None,
    projector: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODULE:CLASS",
            help="A projector class, as module:Class; repeat for more (also: "
            "$LEDGER_PROJECTORS, comma-separated; [tool.ledger] projectors; "
            "entry points 'ledger.projectors').",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print ledger's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Event sourcing on DynamoDB: local server, tables, events, projections, sagas."""
    settings.endpoint_url = endpoint
    settings.table_prefix = prefix
    settings.app = app
    settings.projectors = list(projector or [])
    settings.debug = debug


def run() -> None:
    """Run the CLI, turning errors into one line and a non-zero exit code.

    Usage errors are typer's (exit code 2); any other error is printed as one
    line (exit code 1), or with its traceback under ``--debug``.
    """
    run_with_one_line_errors(cli)
