"""The code blocks of the README and of the documentation site (docs/).

How a page's blocks are used, the convention every page follows:

- a ``python`` block is run: a page's blocks in order, as one module, in a
  folder of the page's own (``tests/test_docs.py``, ``tests/test_readme.py``);
- a block with a title (```` ```python title="shop/app.py" ````) is a file
  the reader writes: it is written at that path in the page's folder, before
  the blocks after it run, and imported from there;
- an ``sh`` block is run with bash in the page's folder, each command
  checked, with the ``ledger`` and ``python`` of the tests' virtualenv;
- a block that cannot run (a command that deploys or runs until Ctrl-C, a
  fragment, a sample of output) is preceded by the line
  ``<!-- not run: why -->``. Any other block must run:
  ``test_every_block_of_the_site_runs_or_says_why_not`` checks it.

``python tests/readme_blocks.py DIR`` writes the Python to type-check:
``DIR/readme_N.py`` for each README section (a ``##`` or ``###`` heading)
with ``python`` blocks, and, for each page of docs/, a folder
``DIR/{page}/`` holding its titled files and ``{page}_examples.py``, its
other Python blocks in order. ``make lint`` runs ``mypy --strict`` over
them with a cold cache. Each section's or page's examples must therefore
import what they use.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.+?) -->$")
"""The marker line before a block that is not run, with the reason."""

_FENCE = re.compile(
    r'^```(?P<language>[\w-]*)(?:\s+title="(?P<title>[^"]+)")?\s*$', re.MULTILINE
)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    """The line of its opening fence, from 1."""
    language: str
    title: str | None
    """The path of the file it is, when it has a title."""
    code: str
    not_run: str | None
    """Why it is not run, when it is marked so."""

    @property
    def where(self) -> str:
        """Say where the block is, for messages and tracebacks."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Return the fenced code blocks of a Markdown page, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or lines[index] == "```":
            index += 1
            continue
        end = lines.index("```", index + 1)
        marker = NOT_RUN.match(lines[index - 1]) if index else None
        found.append(
            Block(
                page=page,
                line=index + 1,
                language=opening["language"],
                title=opening["title"],
                code="\n".join(lines[index + 1 : end]) + "\n",
                not_run=marker["reason"] if marker else None,
            )
        )
        index = end + 1
    return found


def pages() -> list[Path]:
    """Return the pages of the documentation site, in name order."""
    return sorted(DOCS.rglob("*.md"))


def page_name(page: Path) -> str:
    """Return a page's name as a Python identifier (``howto_operate``)."""
    return re.sub(r"\W", "_", str(page.relative_to(DOCS).with_suffix("")))


def sections(text: str) -> list[tuple[str, list[str]]]:
    """Return each README section's title and its Python blocks, in order."""
    found: list[tuple[str, list[str]]] = []
    for part in re.split(r"^#{2,3} ", text, flags=re.MULTILINE)[1:]:
        title = part.splitlines()[0]
        python = re.findall(r"```python\n(.*?)```", part, flags=re.DOTALL)
        if python:
            found.append((title, python))
    return found


def write_page(page: Path, folder: Path) -> None:
    """Write a docs page's Python into ``folder``: its files, then its examples."""
    examples: list[str] = []
    for block in blocks(page):
        if block.language != "python":
            continue
        if block.title is None:
            examples.append(block.code)
            continue
        path = folder / block.title
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.code)
        # a package to mypy, as the reader's folder is to Python; a tests
        # folder is not one (pytest imports its files by their own names)
        for parent in path.relative_to(folder).parents:
            if parent != Path() and parent.name != "tests":
                (folder / parent / "__init__.py").touch()
    if examples:
        folder.mkdir(parents=True, exist_ok=True)
        name = page_name(page)
        header = f'"""The examples of docs/{page.relative_to(DOCS)}."""\n\n'
        (folder / f"{name}_examples.py").write_text(header + "\n\n".join(examples))


def main(argv: list[str]) -> int:
    """Write the modules into the folder ``argv[1]``."""
    if len(argv) != 2:
        sys.stderr.write("usage: python tests/readme_blocks.py DIR\n")
        return 2
    folder = Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for number, (title, python) in enumerate(sections(README.read_text()), 1):
        header = f'"""README section: {title}."""\n\n'
        (folder / f"readme_{number}.py").write_text(header + "\n\n".join(python))
    for page in pages():
        if any(block.language == "python" for block in blocks(page)):
            write_page(page, folder / page_name(page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
