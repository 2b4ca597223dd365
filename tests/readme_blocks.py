"""Write the README's Python examples as modules, one per section, for mypy.

``python tests/readme_blocks.py DIR`` writes ``DIR/readme_N.py`` for each
README section (a ``##`` or ``###`` heading) that has ``python`` blocks, its
blocks in order; ``make lint`` runs ``mypy --strict`` over them. Each
section's examples must therefore import what they use.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def sections(text: str) -> list[tuple[str, list[str]]]:
    """Return each section's title and its Python blocks, in README order."""
    found: list[tuple[str, list[str]]] = []
    for part in re.split(r"^#{2,3} ", text, flags=re.MULTILINE)[1:]:
        title = part.splitlines()[0]
        blocks = re.findall(r"```python\n(.*?)```", part, flags=re.DOTALL)
        if blocks:
            found.append((title, blocks))
    return found


def main(argv: list[str]) -> int:
    """Write the modules into the folder ``argv[1]``."""
    if len(argv) != 2:
        sys.stderr.write("usage: python tests/readme_blocks.py DIR\n")
        return 2
    folder = Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for number, (title, blocks) in enumerate(sections(README.read_text()), 1):
        header = f'"""README section: {title}."""\n\n'
        (folder / f"readme_{number}.py").write_text(header + "\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
