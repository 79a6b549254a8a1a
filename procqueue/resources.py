"""The SQL and example files procqueue ships, as `importlib.resources` Traversables.

In the repository, `migrations/`, `sql/` (with `sql/triggers/`) and `examples/` sit at the
top level, where `supabase db push` users read them. A built wheel carries them inside the
package as `procqueue/_data/<folder>` (pyproject.toml, `[tool.hatch.build.targets.wheel.sources]`),
so any non-editable install (`pip install procqueue-*.whl`, `pip install git+…`, the Docker
image) reads them from there. An editable install (`pip install -e .`, what scripts/test uses)
puts the checkout itself on `sys.path` and has no `procqueue/_data`: then the checkout's own
folders are read, so a new migration needs no reinstall.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

#: Where a wheel puts the top-level folders, inside the package.
PACKAGED = "_data"


class MissingResource(RuntimeError):
    """procqueue was installed without its SQL files (a broken build)."""


def _package() -> Traversable:
    return resources.files("procqueue")


def folder(name: str) -> Traversable:
    """A top-level folder of the repository (`migrations`, `sql`, `examples`)."""
    packaged = _package() / PACKAGED / name
    if packaged.is_dir():
        return packaged
    # Editable install: the package is the checkout's procqueue/, next to the folder.
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    raise MissingResource(
        f"procqueue is installed without its {name}/ folder (looked in {packaged} and "
        f"{checkout / name}); reinstall it from a wheel built with `pip wheel .`"
    )


def sql_files(directory: Traversable) -> list[Traversable]:
    """The `*.sql` files directly in `directory`, by name."""
    found: Iterator[Traversable] = (
        entry for entry in directory.iterdir() if entry.is_file() and entry.name.endswith(".sql")
    )
    return sorted(found, key=lambda entry: entry.name)


def migrations() -> Traversable:
    """The numbered, append-only migrations (`migrations/*.sql`)."""
    return folder("migrations")


def sql() -> Traversable:
    """`sql/`: SQL re-applied by every `procqueue migrate` (and `sql/triggers/`, `sql/roles/`)."""
    return folder("sql")


def triggers() -> Traversable:
    """`sql/triggers/`: the trigger functions, one file per feature."""
    return sql() / "triggers"


def example(name: str) -> Traversable:
    """A file of `examples/`: `sample_schema.sql`, `seed.sql`, `entities.toml`."""
    found = folder("examples") / name
    if not found.is_file():
        raise MissingResource(f"procqueue is installed without examples/{name}")
    return found


def sample_schema() -> Traversable:
    """`examples/sample_schema.sql`: the marketplace tables the demo and the tests use."""
    return example("sample_schema.sql")


def seed() -> Traversable:
    """`examples/seed.sql`: the demo's sample rows."""
    return example("seed.sql")
