"""Every page of the documentation site runs as written, against DynamoDB Local.

The conventions a page's blocks follow are in ``tests/readme_blocks.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from eventsourcing import utils

from ledger.dynamodb.local import find_jar
from tests.readme_blocks import DOCS, README, ROOT, Block, blocks, page_name, pages
from tests.test_wheel_install import installed  # noqa: F401 - a fixture

RUNNABLE = {"python", "sh"}
"""The languages of blocks a test runs; a block of another must have a title
(a file the reader writes) or say why it is not run."""

SLOW_PAGES = {"tutorial"}
"""Pages that take over 30 s: the tutorial runs its own pytest and a benchmark."""


def runs(block: Block) -> bool:
    """Say whether a test runs the block (or writes it, for a titled one)."""
    return block.not_run is None


def runnable_pages() -> list[object]:
    return [
        pytest.param(
            page,
            id=page_name(page),
            marks=[pytest.mark.slow] if page_name(page) in SLOW_PAGES else [],
        )
        for page in pages()
        if any(runs(block) and block.language in RUNNABLE for block in blocks(page))
    ]


def shell_environment(env: dict[str, str], virtualenv: Path | None) -> dict[str, str]:
    """Return the environment of a reader's shell in ``virtualenv``.

    Without one, the tests' own, with this checkout's ledger first (the
    shared virtualenv may hold another checkout's).
    """
    environment = {
        key: value
        for key, value in {**os.environ, **env}.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    bin_dir = virtualenv / "bin" if virtualenv else Path(sys.executable).parent
    environment["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    if virtualenv is None:
        environment["PYTHONPATH"] = str(ROOT / "src")
    environment.update(
        {
            "DYNAMODB_LOCAL_JAR": str(find_jar(ROOT)),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
    )
    return environment


def run_page(
    page: Path,
    project: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    virtualenv: Path | None = None,
) -> None:
    """Run a page's blocks in order, in the reader's folder ``project``.

    Commands run in ``virtualenv`` (default: the tests' own); Python blocks
    run in this process.
    """
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    # eventsourcing finds event classes by module topic: give the examples a
    # real module to live in.
    module = types.ModuleType(f"docs_{page_name(page)}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks(page):
        if not runs(block):
            continue
        if block.title is not None:
            path = project / block.title
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code)
        elif block.language == "python":
            exec(compile(block.code, block.where, "exec"), module.__dict__)  # noqa: S102 - our own docs
        elif block.language == "sh":
            ran = subprocess.run(  # noqa: S603 - our own docs' commands
                ["bash", "-euo", "pipefail", "-c", block.code],  # noqa: S607
                cwd=project,
                env=shell_environment(env, virtualenv),
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert ran.returncode == 0, f"{block.where}\n{ran.stdout}\n{ran.stderr}"


@pytest.fixture
def reader_modules(tmp_path: Path):
    """Forget the modules a page's reader wrote, so no other test imports them.

    eventsourcing keeps each class's topic for the whole process, and refuses
    another class for it: so the topics of those modules are forgotten too,
    for another test of the same page (eventsourcing has no public way to
    forget one topic).
    """
    yield
    forgotten = {
        name
        for name, module in sys.modules.items()
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path))
    }
    for name in forgotten:
        del sys.modules[name]
    with utils._topic_cache_lock:
        for topic, obj in list(utils._topic_cache.items()):
            if topic.partition(":")[0] in forgotten:
                del utils._topic_cache[topic]
                utils._type_cache.pop(obj, None)


@pytest.mark.parametrize("page", runnable_pages())
def test_the_page_runs_as_written_on_dynamodb_local(
    page: Path,
    tmp_path: Path,
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    reader_modules: None,
) -> None:
    run_page(page, tmp_path, dynamodb_env, monkeypatch)


@pytest.mark.parametrize("page", [README, *pages()], ids=lambda page: page.name)
def test_every_block_of_the_site_runs_or_says_why_not(page: Path) -> None:
    unexplained = [
        block.where
        for block in blocks(page)
        if runs(block) and block.title is None and block.language not in RUNNABLE
    ]

    assert not unexplained, (
        "blocks neither run nor marked '<!-- not run: why -->': "
        + ", ".join(unexplained)
    )


def test_the_tutorial_uses_none_of_the_repositorys_example_packages() -> None:
    code = "".join(block.code for block in blocks(DOCS / "tutorial.md"))

    imports = re.findall(r"^\s*(?:from|import) (\w+)", code, flags=re.MULTILINE)

    assert imports
    assert not {"aggregates", "projections"} & set(imports)


def test_the_readmes_links_to_pages_of_the_site_name_pages_that_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README.read_text())

    assert links, "the README links to no page of the site"
    assert [link for link in links if not (ROOT / link).is_file()] == []


@pytest.mark.slow
def test_the_tutorial_runs_with_the_wheel_installed_as_it_says(
    installed: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    reader_modules: None,
) -> None:
    # its commands (the ledger command, pytest with the plugin, the
    # benchmark) in a fresh virtualenv holding the wheel and its extras only
    run_page(DOCS / "tutorial.md", tmp_path, dynamodb_env, monkeypatch, installed)
