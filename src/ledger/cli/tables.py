"""``ledger tables``: create, describe or delete an application's tables."""

from __future__ import annotations

from typing import Annotated

import typer

from ledger.cli.options import console, metered, output_table, settings
from ledger.dynamodb import DynamoDBFactory, TableNotFoundError, schema
from ledger.dynamodb.tables import delete_table

tables_cli = typer.Typer(help="Create, describe or delete an application's tables.")

TABLE_KINDS = (
    schema.EVENTS_TABLE,
    schema.SNAPSHOTS_TABLE,
    schema.NOTIFICATIONS_TABLE,
    schema.TRACKING_TABLE,
    schema.IDEMPOTENCY_TABLE,
)
"""An application's tables, in the order the commands list them."""


AppName = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="The application's name, which its tables are named after "
        "(default: the name of the --app class).",
    ),
]


def _projection_tables(name: str | None) -> list[str]:
    """Return the tables of the project's projections (for the --app's tables).

    None with ``--name``: the projectors found belong to the --app's
    application, not necessarily to the one named. Each projection has a
    control table, a dead-letter table and one table per existing version.
    """
    if name is not None:
        return []
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415

    tables: list[str] = []
    for projector_class in settings.project().projector_classes().values():
        env = settings.environment(projector_class.name, CREATE_TABLE="no")
        view = open_view(projector_class, dict(env))
        tables += [view.control_table_name, view.parked_table_name]
        tables += [view.version_table_name(v) for v in view.existing_versions()]
    return tables


def _factory(name: str | None) -> DynamoDBFactory:
    """Return a factory for an application's tables that creates none itself."""
    if name is None:
        name = settings.project().application_class().name
    return DynamoDBFactory(settings.environment(name, CREATE_TABLE="no"))


@tables_cli.command("create")
def tables_create(app: AppName = None) -> None:
    """Create an application's tables (existing ones are left as they are)."""
    factory = _factory(app)
    with metered(factory):
        snapshots = factory.aggregate_recorder(schema.SNAPSHOTS_TABLE)
        process = factory.process_recorder()
        for recorder in (snapshots, process):
            recorder.create_table()  # type: ignore[attr-defined]
        process.idempotency.create_table()  # type: ignore[attr-defined]
    for kind in TABLE_KINDS:
        if kind == schema.NOTIFICATIONS_TABLE and factory.ordering == "stream":
            continue  # no application sequence in stream ordering
        console.print(f"ready: {factory.table_name(kind)}")


@tables_cli.command("describe")
def tables_describe(app: AppName = None) -> None:
    """Show an application's tables (and its projections'): status, items, size.

    Without --name, the tables of the projections found are listed too.
    """
    factory = _factory(app)
    table = output_table("table", "status", "items", "bytes", "stream")
    with metered(factory):
        names = [factory.table_name(kind) for kind in TABLE_KINDS]
        for name in [*names, *_projection_tables(app)]:
            try:
                found = factory.connection.call("describe_table", TableName=name)
            except TableNotFoundError:  # a row, not an error
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
    app: AppName = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Delete without asking (all events are lost).")
    ] = False,
) -> None:
    """Delete an application's tables and everything in them.

    Without --name, the tables of the projections found go too.
    """
    factory = _factory(app)
    names = [factory.table_name(kind) for kind in TABLE_KINDS]
    names += _projection_tables(app)
    if not yes:
        typer.confirm(f"Delete {', '.join(names)} and every event in them?", abort=True)
    with metered(factory):
        for name in names:
            deleted = delete_table(factory.connection, name)
            console.print(f"{'deleted' if deleted else 'absent '}: {name}")
