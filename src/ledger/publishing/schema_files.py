"""JSON Schema files of integration events, exported from their models.

Each integration event class has one file, ``{folder}/{source}/{detail-type}.json``
(``schemas/integration/ledger.orders/OrderPlaced.v1.json``): the JSON Schema
(draft 2020-12) of the EventBridge event's ``detail`` as pydantic serialises
it (``model_json_schema(mode="serialization")``), with the ``source`` and
``detail-type`` it is published under. Commit the files; a test compares
them with what the models produce (:func:`stale_files`), so they cannot
drift. A released schema never changes: a change is a new detail-type.

Export from the command line::

    python -m ledger.publishing.schema_files \
        projections.integration:OrderEvents schemas/integration [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from eventsourcing.utils import resolve_topic

from ledger.publishing.events import IntegrationEvent, Publication

__all__ = ["schema_document", "schema_path", "stale_files", "write_schemas"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_document(event_class: type[IntegrationEvent]) -> dict[str, Any]:
    """Return the JSON Schema of an integration event's ``detail``."""
    document: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "x-eventbridge-source": event_class.source,
        "x-eventbridge-detail-type": event_class.detail_type,
    }
    document.update(event_class.model_json_schema(mode="serialization"))
    document["title"] = event_class.detail_type
    return document


def schema_text(event_class: type[IntegrationEvent]) -> str:
    """Return a schema file's exact text (sorted keys, two-space indent)."""
    return json.dumps(schema_document(event_class), indent=2, sort_keys=True) + "\n"


def schema_path(folder: Path, event_class: type[IntegrationEvent]) -> Path:
    """Return where an integration event's schema file lives under ``folder``."""
    return folder / event_class.source / f"{event_class.detail_type}.json"


def write_schemas(publication: type[Publication], folder: Path) -> list[Path]:
    """Write the schema file of every event of a publication; return the paths."""
    written = []
    for event_class in publication.events:
        path = schema_path(folder, event_class)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(schema_text(event_class))
        written.append(path)
    return written


def stale_files(publication: type[Publication], folder: Path) -> list[Path]:
    """Return the schema files that are missing or differ from the models."""
    return [
        path
        for event_class in publication.events
        if not (path := schema_path(folder, event_class)).is_file()
        or path.read_text() != schema_text(event_class)
    ]


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) a publication's schema files."""
    parser = argparse.ArgumentParser(
        prog="python -m ledger.publishing.schema_files",
        description="Export the JSON Schema files of a publication's events.",
    )
    parser.add_argument("publication", help="module:Class of the Publication")
    parser.add_argument("folder", type=Path, help="where the files go")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file is missing or differs",
    )
    args = parser.parse_args(argv)
    publication = resolve_topic(args.publication)
    if not (isinstance(publication, type) and issubclass(publication, Publication)):
        parser.error(f"{args.publication} is not a Publication class")
    if args.check:
        stale = stale_files(publication, args.folder)
        for path in stale:
            sys.stderr.write(f"stale or missing: {path}\n")
        return 1 if stale else 0
    for path in write_schemas(publication, args.folder):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
