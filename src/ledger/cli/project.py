"""What the commands work on: your application class and your projectors.

Found in this order, the first that gives one winning:

1. the root options ``--app module:Class`` and ``--projector module:Class``
   (repeatable);
2. the environment: ``LEDGER_APP`` and ``LEDGER_PROJECTORS`` (separated by
   commas, spaces around them ignored: ``shop.views:A, shop.views:B``);
3. ``[tool.ledger]`` in the nearest ``pyproject.toml`` from the working
   directory up: ``app = "module:Class"``, ``projectors = ["module:Class"]``;
4. projectors only: installed packages' entry points in the group
   ``ledger.projectors``.

The working directory is importable, as with ``python -m``. A projection is
named by its projector's ``name``.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from eventsourcing.application import Application

    from ledger.projections import Projector

LEDGER_APP = "LEDGER_APP"
"""Environment key: the application class, as ``module:Class``."""
LEDGER_PROJECTORS = "LEDGER_PROJECTORS"
"""Environment key: projector classes, as ``module:Class``, comma-separated."""
ENTRY_POINT_GROUP = "ledger.projectors"
"""Entry-point group in which installed packages declare their projectors."""

_HOW = (
    "give --app module:Class (and --projector module:Class), set LEDGER_APP "
    "(and LEDGER_PROJECTORS), or add [tool.ledger] app = ... and projectors = "
    "[...] to your pyproject.toml"
)


@dataclass
class Project:
    """The application and projectors the commands use, and where they came from."""

    app: str | None = None
    projectors: list[str] = field(default_factory=list)
    source: str = "nothing"
    """Where ``app`` was found, for messages."""

    def application_class(self) -> type[Application[Any]]:
        """Return the application class, or fail saying how to name one."""
        from eventsourcing.application import Application  # noqa: PLC0415

        from ledger.projections import Projector  # noqa: PLC0415

        if self.app is None:
            raise typer.BadParameter(f"no application class: {_HOW}.")
        found = load_class(self.app, f"the app ({self.source})")
        if not issubclass(found, Application):
            hint = (
                " It is a projector: name it with --projector (or LEDGER_PROJECTORS)."
                if issubclass(found, Projector)
                else ""
            )
            raise typer.BadParameter(
                f"the app ({self.source}) {self.app!r} is not an eventsourcing "
                f"Application class.{hint}"
            )
        application: type[Application[Any]] = found
        return application

    def projector_classes(self) -> dict[str, type[Projector]]:
        """Return the projector classes by projection name."""
        from ledger.projections import Projector  # noqa: PLC0415

        classes: dict[str, type[Projector]] = {}
        for topic in self.projectors:
            projector = load_class(topic, "a projector")
            if not issubclass(projector, Projector):
                raise typer.BadParameter(
                    f"projector {topic!r} is not a ledger.projections.Projector class."
                )
            classes.setdefault(projector.name, projector)
        return classes

    def projector_class(self, name: str) -> type[Projector]:
        """Return the projector of projection ``name``, or fail listing the known."""
        known = self.projector_classes()
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise typer.BadParameter(
                f"unknown projection {name!r} (known: {listed}): {_HOW}."
            )
        return known[name]


def find_project(
    app: str | None, projectors: list[str], start: Path | None = None
) -> Project:
    """Return what the commands work on (see the module docstring)."""
    folder = (start or Path.cwd()).resolve()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the working directory is importable
    config, config_path = _pyproject_config(folder)
    found = Project()
    for value, source in (
        (app, "--app"),
        (os.environ.get(LEDGER_APP), LEDGER_APP),
        (config.get("app"), f"[tool.ledger] app in {config_path}"),
    ):
        if value:
            found.app, found.source = str(value), source
            break
    env_projectors = [
        p.strip() for p in os.environ.get(LEDGER_PROJECTORS, "").split(",") if p.strip()
    ]
    configured = config.get("projectors", [])
    if not isinstance(configured, list):
        raise typer.BadParameter(
            f"[tool.ledger] projectors in {config_path} must be a list of "
            "'module:Class' strings."
        )
    installed = [
        entry.value for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.value
    ]
    found.projectors = [*projectors, *env_projectors, *map(str, configured), *installed]
    return found


def _pyproject_config(folder: Path) -> tuple[dict[str, Any], Path | None]:
    """Return ``[tool.ledger]`` of the nearest pyproject.toml, and its path."""
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            with path.open("rb") as file:
                try:
                    data = tomllib.load(file)
                except tomllib.TOMLDecodeError as error:
                    raise typer.BadParameter(
                        f"{path} is not valid TOML: {error}"
                    ) from None
            config = data.get("tool", {}).get("ledger", {})
            return (config if isinstance(config, dict) else {}), path
    return {}, None


def load_class(topic: str, what: str) -> Any:
    """Import ``module:Class`` (``what`` names it in errors)."""
    found = load_object(topic, what)
    if not isinstance(found, type):
        raise typer.BadParameter(f"{what} {topic!r} is not a class.")
    return found


def load_object(topic: str, what: str) -> Any:
    """Import ``module:name`` (a class or a function; ``what`` names it in errors)."""
    module_name, _, qualname = topic.partition(":")
    if not module_name or not qualname:
        raise typer.BadParameter(
            f"{what} is {topic!r}: write it as module:Class, e.g. shop.app:Shop."
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise typer.BadParameter(
            f"cannot import module {module_name!r} for {what} ({error}). Run ledger "
            f"from your project's folder (it is importable: {Path.cwd()}), or "
            "install your project into this environment."
        ) from None
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise typer.BadParameter(
                f"module {module_name!r} has no {qualname!r} (for {what})."
            ) from None
    return found
