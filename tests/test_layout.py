"""The package is sliced by feature: the core imports no feature and no feature
imports another; only the composition roots see them all."""

from __future__ import annotations

import re

from tests.support.repo import REPO_DIR

FEATURES = {"search", "images", "notifications"}
#: Modules that put the parts together: they may import every feature.
COMPOSITION_ROOTS = {"app", "cli", "features", "migrate", "demo", "local", "commands", "dashboard"}


#: An import statement naming a procqueue module, at any indentation (the composition
#: roots import some lazily). Read as text, not with `ast`: CPython 3.11's parser can
#: fail with "AST constructor recursion depth mismatch" under pytest-asyncio.
IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+procqueue\.(\w+)|import[ \t]+procqueue\.(\w+)"
    r"|from[ \t]+procqueue[ \t]+import[ \t]+([\w, ]+))",
    re.MULTILINE,
)


def imports() -> set[tuple[str, str]]:
    """(importing module's part, imported module's part) for every procqueue import:
    the part is the first name under procqueue/ ('search', 'queue', 'runtime', ...)."""
    edges = set()
    for path in (REPO_DIR / "procqueue").rglob("*.py"):
        source = path.relative_to(REPO_DIR / "procqueue").with_suffix("").parts[0]
        for match in IMPORT.finditer(path.read_text(encoding="utf-8")):
            module, imported, names = match.groups()
            for target in [module or imported] if names is None else names.split(","):
                edges.add((source, target.strip()))
    return edges


def test_the_core_imports_no_feature_and_features_not_each_other() -> None:
    edges = imports()
    assert ("search", "queue") in edges  # the walk sees imports at all
    upward = sorted(
        (source, target)
        for source, target in edges
        if target in FEATURES and source != target and source not in COMPOSITION_ROOTS
    )
    assert upward == []
