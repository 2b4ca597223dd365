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

from ledger.dynamodb.local import find_jar
from tests.readme_blocks import DOCS, README, ROOT, Block, blocks, page_name, pages

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
        if any(runs(block) for block in blocks(page))
    ]


def shell_environment(project: Path, env: dict[str, str]) -> dict[str, str]:
    """Return the environment a reader's shell has: the tests' virtualenv."""
    return {
        **os.environ,
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # this checkout's ledger (the shared virtualenv may hold another's),
        # and the reader's own modules
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(project)]),
        "DYNAMODB_LOCAL_JAR": str(find_jar(ROOT)),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }


def run_page(
    page: Path, project: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run a page's blocks in order, in the reader's folder ``project``."""
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
        else:
            ran = subprocess.run(  # noqa: S603 - our own docs' commands
                ["bash", "-euo", "pipefail", "-c", block.code],  # noqa: S607
                cwd=project,
                env=shell_environment(project, env),
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert ran.returncode == 0, f"{block.where}\n{ran.stdout}\n{ran.stderr}"


@pytest.fixture
def reader_modules(tmp_path: Path):
    """Forget the modules a page's reader wrote, so no other test imports them."""
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


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
