"""What the ``ledger`` subcommands share: options, settings, consoles, errors, costs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from eventsourcing.application import Application
from eventsourcing.utils import Environment, resolve_topic
from rich.console import Console

from ledger.dynamodb import Meter, measure

DEFAULT_APPLICATION = "aggregates.application:Orders"
"""The application class the commands use unless told otherwise."""

console = Console(highlight=False)
"""Where commands print their results (stdout)."""
errors = Console(stderr=True, highlight=False)
"""Where commands print their errors (stderr)."""

# Options more than one command takes -------------------------------------------------

AppName = Annotated[
    str, typer.Option("--app", help="Application name (the table name stem).")
]
ApplicationTopic = Annotated[
    str, typer.Option(help="The application class, as module:Class.")
]
ProjectionName = Annotated[str, typer.Argument(help="The projection's name.")]
ProjectorTopic = Annotated[
    str | None,
    typer.Option(help="The projector class, as module:Class (default: by name)."),
]


@dataclass
class Settings:
    """The root command's options, which every subcommand uses."""

    endpoint_url: str | None = None
    table_prefix: str | None = None
    debug: bool = False

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

    def application(self, topic: str, **extra: str) -> Application[Any]:
        """Return an application of the class named ``module:Class``."""
        app_class: type[Application[Any]] = resolve_topic(topic)
        return app_class(env=dict(self.environment(app_class.name, **extra)))


settings = Settings()
"""The root command's options: its callback sets them before any subcommand runs.

A holder rather than typer's context because the error boundary, which runs
after the context is gone, needs ``debug`` too.
"""


@contextmanager
def metered(uses_dynamodb: Any) -> Iterator[Meter]:
    """Meter a command's DynamoDB work and print its cost at the end.

    ``uses_dynamodb`` is an application, factory, view or connection. The cost
    is printed only when the block succeeds.
    """
    with measure(uses_dynamodb) as meter:
        yield meter
    console.print(f"[dim]DynamoDB: {meter.summary()}[/dim]")


def run_with_one_line_errors(command: Callable[[], object]) -> None:
    """Run ``command``, turning any error into one line and exit code 1.

    Usage errors are typer's (exit code 2) and pass through; under ``--debug``
    the traceback is printed instead of the line.
    """
    try:
        command()
    except Exception as error:  # noqa: BLE001 - the CLI's single error boundary
        if settings.debug:
            errors.print_exception()
        else:
            errors.print(
                f"ledger: {type(error).__name__}: {error} (use --debug for details)"
            )
        raise SystemExit(1) from None
