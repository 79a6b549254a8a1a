"""The package is sliced by feature: the core imports no feature and no feature
imports another; only the composition roots see them all."""

from __future__ import annotations

import ast

from tests.support.repo import REPO_DIR

FEATURES = {"search", "images", "notifications"}
#: Modules that put the parts together: they may import every feature.
COMPOSITION_ROOTS = {"app", "cli", "features", "migrate", "demo", "local", "commands", "dashboard"}


def imports() -> set[tuple[str, str]]:
    """(importing module's part, imported module's part) for every procqueue import:
    the part is the first name under procqueue/ ('search', 'queue', 'runtime', ...)."""
    edges = set()
    for path in (REPO_DIR / "procqueue").rglob("*.py"):
        source = path.relative_to(REPO_DIR / "procqueue").with_suffix("").parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "procqueue" and len(parts) > 1:
                    edges.add((source, parts[1]))
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
