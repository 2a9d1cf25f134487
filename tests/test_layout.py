"""The layout promised in docs/development.md: the drawn tree matches the files, and imports walk one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chalicelib", "db", "worker", "commands")
# Which of the project's packages each part may import (docs/development.md, "Data walks one way").
MAY_IMPORT = {
    "app": {"chalicelib"},
    "chalicelib": {"chalicelib"},
    "db": {"db", "chalicelib"},
    "worker": {"worker", "db", "chalicelib"},
    "commands": {"commands", "worker", "db", "chalicelib"},
}


def layout_block() -> str:
    text = (ROOT / "docs" / "development.md").read_text()
    return re.search(r"```\n(app\.py.*?)```", text, flags=re.S).group(1)  # type: ignore[union-attr] # the block is there


def drawn_modules() -> set[str]:
    """Every module file the drawing names, as a path: `  queues/base.py` under `chalicelib/` and
    `status.py, merge.py` lines both count."""
    found: set[str] = set()
    package = ""
    for line in layout_block().splitlines():
        head = re.match(r"(\w+)/\s", line)
        if head:
            package = head.group(1)
            continue
        if not line.startswith("  ") or not package:
            continue
        names = re.findall(r"([\w/]+\.py)", line.split("  ", 2)[1] if line.strip() else "")
        found.update(f"{package}/{name}" for name in names)
    return found


def project_modules() -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__init__.py" and "migrations" not in p.parts
    }


def test_the_drawn_layout_names_every_module_and_only_real_ones() -> None:
    drawn, real = drawn_modules(), project_modules()
    assert drawn - real == set(), f"docs/development.md draws modules that do not exist: {sorted(drawn - real)}"
    assert real - drawn == set(), f"modules missing from docs/development.md's layout: {sorted(real - drawn)}"


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & (set(PACKAGES) | {"app", "read_queue"})


def test_imports_walk_one_way() -> None:
    problems = []
    files = [ROOT / "app.py", *(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))]
    for path in files:
        part = path.relative_to(ROOT).parts[0].removesuffix(".py")
        bad = imported_packages(path) - MAY_IMPORT[part]
        if bad:
            problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert problems == [], problems
