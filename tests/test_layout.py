"""The package is sliced by feature: the core reaches no feature and no feature
reaches another; only the composition roots see them all; and no module can reach
itself again through its imports (no import loop, however indirect).

"Reach" counts every import that runs: at module level and inside functions, all
but those under `if TYPE_CHECKING:`, which never run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache

from tests.support.repo import REPO_DIR

PACKAGE = REPO_DIR / "procqueue"
FEATURES = {"search", "images", "notifications"}
#: Modules that put the parts together: they may import every feature.
COMPOSITION_ROOTS = {"app", "cli", "features", "migrate", "demo", "local", "commands", "dashboard"}
#: What may sit at the top level besides the composition roots: shared leaves.
TOP_LEVEL_LEAVES = {
    "errors", "settings", "entities", "feature", "queries", "resources", "redaction",
    "progress",
}  # fmt: skip

#: An import statement naming a procqueue module, at any indentation. Read as text,
#: not with `ast`: CPython 3.11's parser can fail with "AST constructor recursion
#: depth mismatch" under pytest-asyncio.
IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)(?:from[ \t]+(?P<module>procqueue(?:\.\w+)*)[ \t]+import[ \t]+"
    r"(?P<names>\([^)]*\)|[^\n#]+)|import[ \t]+(?P<plain>procqueue(?:\.\w+)*))",
    re.MULTILINE,
)
TYPE_CHECKING_BLOCK = re.compile(r"^(?P<indent>[ \t]*)if TYPE_CHECKING:[^\n]*\n", re.MULTILINE)


@cache
def modules() -> dict[str, str]:
    """Dotted module name -> source, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO_DIR).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path.read_text(encoding="utf-8")
    return found


def _without_type_checking_blocks(source: str) -> str:
    """`source` with the bodies of `if TYPE_CHECKING:` blocks blanked out."""
    lines = source.splitlines()
    kept: list[str] = []
    skipping_deeper_than: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skipping_deeper_than is not None:
            if not line.strip() or indent > skipping_deeper_than:
                kept.append("")
                continue
            skipping_deeper_than = None
        if TYPE_CHECKING_BLOCK.match(line + "\n"):
            skipping_deeper_than = indent
        kept.append(line)
    return "\n".join(kept)


def _module_of(name: str) -> str | None:
    """The package module `name` is, or is inside (a name imported from it)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imported(source: str) -> Iterator[str]:
    for match in IMPORT.finditer(_without_type_checking_blocks(source)):
        if match["plain"]:
            yield match["plain"]
            continue
        names = match["names"].strip("() \n").replace("\n", " ")
        for name in (each.split(" as ")[0].strip() for each in names.split(",")):
            if name:
                full = f"{match['module']}.{name}"
                yield full if full in modules() else match["module"]


@cache
def edges() -> dict[str, frozenset[str]]:
    """Module -> the package modules it imports (any indentation, TYPE_CHECKING aside)."""
    graph = {}
    for name, source in modules().items():
        targets = {_module_of(target) for target in _imported(source)}
        graph[name] = frozenset(t for t in targets if t is not None and t != name)
    return graph


def reach(start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        for target in edges()[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def part(module: str) -> str:
    """The first name under procqueue/ ('search', 'queue', 'engine', 'app', ...)."""
    return module.split(".")[1] if "." in module else module


def test_the_walk_sees_imports_inside_functions_and_skips_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from procqueue.search import client\n"
        "def f():\n    from procqueue.queue import (\n        jobs,\n        retry,\n    )\n"
    )
    assert sorted(_imported(source)) == ["procqueue.queue.jobs", "procqueue.queue.retry"]


def test_no_module_reaches_itself_through_its_imports() -> None:
    loops = sorted(name for name in modules() if name in reach(name))
    assert loops == [], f"import loops through: {loops}"


def test_the_core_reaches_no_feature_and_features_not_each_other() -> None:
    assert "procqueue.engine.app" in reach("procqueue.search.feature")  # the walk works
    upward = sorted(
        (name, target)
        for name in modules()
        if part(name) not in COMPOSITION_ROOTS
        for target in reach(name)
        if part(target) in FEATURES and part(target) != part(name)
    )
    assert upward == []


def test_the_top_level_keeps_only_composition_roots_and_shared_leaves() -> None:
    top_level = {part(name) for name in modules() if name.count(".") == 1}
    packages = {part(name) for name in modules() if name.count(".") >= 2}
    stray = sorted(top_level - packages - COMPOSITION_ROOTS - TOP_LEVEL_LEAVES)
    assert stray == [], f"top-level modules that belong in a package: {stray}"
    leaves_reaching_up = sorted(
        (leaf, target)
        for leaf in TOP_LEVEL_LEAVES
        if f"procqueue.{leaf}" in modules()
        for target in reach(f"procqueue.{leaf}")
        if part(target) in COMPOSITION_ROOTS | FEATURES
    )
    assert leaves_reaching_up == []
