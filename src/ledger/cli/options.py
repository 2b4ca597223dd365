"""What the ``ledger`` subcommands share: options, settings, consoles, errors, costs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from eventsourcing.application import Application
from eventsourcing.utils import Environment
from rich.console import Console
from rich.table import Column, Table

from ledger.cli.project import Project, find_project
from ledger.dynamodb import Meter, measure

PIPED_WIDTH = 100_000
"""The width of output that goes to a file or a pipe: lines and tables are
never wrapped or cut there (rich would assume 80 columns)."""

# No markup: printed values hold brackets ("[tool.ledger]", "[type=missing]").
console = Console(
    highlight=False,
    markup=False,
    width=None if sys.stdout.isatty() else PIPED_WIDTH,
)
"""Where commands print their results (stdout)."""
errors = Console(
    stderr=True,
    highlight=False,
    markup=False,
    width=None if sys.stderr.isatty() else PIPED_WIDTH,
)
"""Where commands print their errors (stderr)."""


def output_table(*headers: str) -> Table:
    """Return a table with these columns, whose cells fold rather than end in "…".

    On a narrow terminal a long value (an id, a topic, an error) wraps onto
    more lines instead of losing its end.
    """
    return Table(*(Column(header, overflow="fold") for header in headers))


# Options more than one command takes -------------------------------------------------

ProjectionName = Annotated[
    str, typer.Argument(help="The projection's name (its projector's `name`).")
]
JsonOutput = Annotated[
    bool,
    typer.Option("--json", help="Print JSON (the DynamoDB cost line goes to stderr)."),
]


@dataclass
class Settings:
    """The root command's options, which every subcommand uses."""

    endpoint_url: str | None = None
    table_prefix: str | None = None
    debug: bool = False
    app: str | None = None
    """``--app``: the application class, as ``module:Class``."""
    projectors: list[str] = field(default_factory=list)
    """``--projector`` (repeatable): projector classes, as ``module:Class``."""

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

    def project(self) -> Project:
        """Return the application and projectors the commands work on."""
        return find_project(self.app, self.projectors)

    def application(self, **extra: str) -> Application[Any]:
        """Return an instance of the application class the commands work on."""
        app_class = self.project().application_class()
        return app_class(env=dict(self.environment(app_class.name, **extra)))


settings = Settings()
"""The root command's options: its callback sets them before any subcommand runs.

A holder rather than typer's context because the error boundary, which runs
after the context is gone, needs ``debug`` too.
"""


@contextmanager
def metered(uses_dynamodb: Any, *, to_stderr: bool = False) -> Iterator[Meter]:
    """Meter a command's DynamoDB work and print its cost at the end.

    ``uses_dynamodb`` is an application, factory, view or connection. The cost
    is printed only when the block succeeds; on stderr with ``to_stderr``
    (when stdout is JSON).
    """
    with measure(uses_dynamodb) as meter:
        yield meter
    (errors if to_stderr else console).print(
        f"DynamoDB: {meter.summary()}", style="dim"
    )


def print_json(value: Any) -> None:
    """Print a value as JSON on stdout (ids, times and decimals as strings)."""
    typer.echo(json.dumps(value, indent=2, default=str))


def run_with_one_line_errors(command: Callable[[], object]) -> None:
    """Run ``command``, turning any error into one line and exit code 1.

    Usage errors are typer's (exit code 2) and pass through; under ``--debug``
    the traceback is printed instead of the line.
    """
    try:
        command()
    except Exception as error:  # noqa: BLE001 - the CLI's single error boundary
        if settings.debug:
            # Not ``errors``: a traceback's panels fill the console's width,
            # which is unbounded when piped.
            Console(stderr=True).print_exception()
        else:
            errors.print(
                f"ledger: {type(error).__name__}: {error} (use --debug for details)",
                soft_wrap=True,
            )
        raise SystemExit(1) from None
