"""``ledger sagas dlq``: list, redrive and drop a saga application's parked sagas.

The saga application is named by ``--saga`` (or ``LEDGER_SAGA``, or
``[tool.ledger] saga`` in pyproject.toml) as ``module:Class``, or as
``module:function``: a function taking ``env`` (the environment, a mapping)
that returns the saga application connected to the applications its steps
go to. ``list`` and ``drop`` need only the class; ``redrive`` sends steps,
so it needs the connected application.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger.cli.options import (
    JsonOutput,
    console,
    metered,
    output_table,
    print_json,
    settings,
)
from ledger.cli.project import _pyproject_config, load_object

if TYPE_CHECKING:
    from pathlib import Path

    from ledger.sagas import SagaApplication

LEDGER_SAGA = "LEDGER_SAGA"
"""Environment key: the saga application, as ``module:Class`` or ``module:function``."""

sagas_cli = typer.Typer(help="Inspect sagas whose steps kept failing.")
dlq_cli = typer.Typer(
    help="List, redrive and drop parked sagas: a step that kept failing, and "
    "the saga's later steps waiting behind it."
)
sagas_cli.add_typer(dlq_cli, name="dlq")

SagaOption = Annotated[
    str | None,
    typer.Option(
        "--saga",
        help="The saga application, as module:Class, or module:function taking "
        "env and returning it connected to its target applications (redrive "
        "needs that). Default: $LEDGER_SAGA, then [tool.ledger] saga in "
        "pyproject.toml.",
    ),
]
SagaId = Annotated[str, typer.Argument(help="The saga's id (a UUID, as listed).")]


def open_saga_application(topic: str | None, *, read_only: bool) -> SagaApplication:
    """Return the saga application a command works on.

    ``read_only``: create no tables (a wrong region or prefix is then an
    error naming the missing table, not a new empty store).
    """
    from ledger.sagas import SagaApplication  # noqa: PLC0415

    found = _find(topic)
    extra = {"CREATE_TABLE": "no"} if read_only else {}
    if isinstance(found, type) and issubclass(found, SagaApplication):
        env = settings.environment(found.name, **extra)
        return found(env=dict(env))
    if isinstance(found, type) or not callable(found):
        raise typer.BadParameter(
            f"--saga {_named(topic)!r} is neither a SagaApplication class nor a "
            "function returning one."
        )
    made = found(env=dict(settings.environment("", **extra)))
    if not isinstance(made, SagaApplication):
        raise typer.BadParameter(
            f"--saga {_named(topic)!r} returned {type(made).__name__}, not a "
            "SagaApplication."
        )
    return made


def _named(topic: str | None) -> str:
    config, _ = _config()
    return topic or os.environ.get(LEDGER_SAGA) or str(config.get("saga", ""))


def _config() -> tuple[dict[str, Any], Path | None]:
    from pathlib import Path  # noqa: PLC0415

    return _pyproject_config(Path.cwd().resolve())


def _find(topic: str | None) -> Any:
    named = _named(topic)
    if not named:
        raise typer.BadParameter(
            "no saga application: give --saga module:Class, set LEDGER_SAGA, or "
            'add [tool.ledger] saga = "module:Class" to your pyproject.toml.'
        )
    settings.project()  # makes the working directory importable
    return load_object(named, "--saga")


@dlq_cli.command("list")
def dlq_list(saga: SagaOption = None, as_json: JsonOutput = False) -> None:
    """List parked sagas: the step that failed, its error, the steps waiting."""
    app = open_saga_application(saga, read_only=True)
    with metered(app, to_stderr=as_json):
        parked = app.parked_sagas()
    if as_json:
        print_json([dataclasses.asdict(each) for each in parked])
        return
    table = output_table("step", "version", "attempts", "error", "waiting", "parked at")
    table.add_column("saga", no_wrap=True, min_width=36)
    for each in parked:
        table.add_row(
            each.step,
            str(each.version),
            str(each.attempts),
            each.error,
            ", ".join(map(str, each.waiting)) or "-",
            each.parked_at,
            each.saga_id,
        )
    console.print(table if parked else "no parked sagas")


@dlq_cli.command("redrive")
def dlq_redrive(
    saga_id: Annotated[
        str | None, typer.Argument(help="Redrive this saga only (default: all).")
    ] = None,
    saga: SagaOption = None,
) -> None:
    """Send parked sagas' steps again, in order (after the fix).

    Each saga's parked step, then the steps waiting behind it, under their
    own idempotency keys: a step its target applied before stores nothing
    again. Exits 1 if a step failed again (its saga stays parked).
    """
    app = open_saga_application(saga, read_only=False)
    with metered(app):
        outcomes = app.redrive(saga_id)
        for redriven, outcome in outcomes.items():
            console.print(f"{redriven}: {outcome}")
        if not outcomes:
            console.print("no parked sagas")
    if "parked" in outcomes.values():
        raise typer.Exit(1)


@dlq_cli.command("drop")
def dlq_drop(
    saga_id: SagaId,
    saga: SagaOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask to confirm.")] = False,
) -> None:
    """Give up on a parked saga's steps: they are never sent.

    The saga's later steps are sent as usual; its state stays as it is.
    """
    app = open_saga_application(saga, read_only=True)
    if not yes:
        typer.confirm(
            f"Never send saga {saga_id}'s parked and waiting steps?", abort=True
        )
    with metered(app):
        dropped = app.drop(saga_id)
        console.print(
            f"dropped {dropped} steps of saga {saga_id}"
            if dropped
            else f"saga {saga_id} is not parked"
        )
