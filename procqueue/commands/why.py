"""`procqueue why <entity> <id>`: why one row is missing from its index or stale
there, and the one command that fixes it (procqueue/search/why.py). Exits 0 when the
row and its document agree, 1 when they do not, 2 on an error (unknown entity, an
id the key cannot hold, nothing known of the id)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from typing import Any

from procqueue.commands.output import table
from procqueue.engine.connections import connect_async
from procqueue.engine.preflight import check_installed
from procqueue.entities import load_entities
from procqueue.features import get_settings
from procqueue.images.jobs import CLEANUP
from procqueue.search.why import Story, story_of


async def _story(entity_name: str, entity_id: str) -> Story:
    settings = get_settings()
    entities = load_entities(settings.entities_file)
    async with await connect_async(
        settings.dsn, transaction_pooler=settings.uses_transaction_pooler, autocommit=True
    ) as conn:
        await check_installed(conn)
        return await story_of(
            conn, settings.search, entities, entity_name, entity_id, image_cleanup=CLEANUP
        )


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def render(story: Story) -> str:
    """The story as text: one block per part, the verdict and its fix last."""
    row, doc = story.row, story.document
    state = {
        "present": "present" + (f" (no document possible: {row.unindexable})"
                                if row.unindexable else ""),
        "deleted": "deleted (no such row)",
        "hidden": f"hidden by row-level security from role {row.hidden_from}",
    }[row.state]  # fmt: skip
    lines = [f"{story.entity} {story.entity_id}", f"row:       {state}"]
    if doc.alias_missing:
        lines.append(f"document:  none: the alias {doc.alias} does not exist")
    elif doc.present:
        differ = f"; {len(doc.differs)} field(s) differ" if doc.differs else ""
        lines.append(f"document:  in {doc.alias}, version {doc.version}{differ}")
    else:
        lines.append(f"document:  not in {doc.alias}")
    change = story.change
    if change is not None:
        claim = (f"claimed by drain job {change.claimed_by}" if change.claim_live
                 else "not claimed")  # fmt: skip
        lines.append(f"change:    waiting since {_time(change.changed_at)}, "
                     f"{change.changes} write(s), {claim}")  # fmt: skip
    else:
        lines.append("change:    none waiting")
    if story.circuit is not None:
        lines.append(f"circuit:   {story.circuit.sink} open since "
                     f"{_time(story.circuit.opened_at)}: {story.circuit.reason}")  # fmt: skip
    for title, headers, rows in (
        ("fields that differ (indexed → now)", ["field", "indexed", "now"],
         [[d.field, json.dumps(d.indexed), json.dumps(d.current)] for d in doc.differs]),
        ("sync jobs", ["job", "task", "status", "attempts", "due", "postponed"],
         [[j.id, j.task_name, j.status, j.attempts, _time(j.scheduled_at),
           j.postponed_reason] for j in story.jobs]),
        ("failed attempts", ["job", "attempt", "at", "error"],
         [[a.job_id, a.attempt, _time(a.occurred_at),
           f"{a.error_type.rsplit('.', 1)[-1]}: {(a.message.splitlines() or [''])[0][:120]}"]
          for a in story.attempts]),
        ("documents refused", ["job", "index", "status", "reason"],
         [[e.job_id, e.index_name, e.status, e.reason[:120]] for e in story.item_errors]),
        ("images waiting for cleanup", ["job", "status", "due", "urls"],
         [[i.job_id, i.status, _time(i.scheduled_at), " ".join(i.urls)] for i in story.images]),
    ):  # fmt: skip
        if rows:
            lines += ["", f"{title}:", table(headers, rows)]
    verdict = story.verdict
    lines += ["", f"verdict:   {verdict.summary}"]
    if verdict.fix:
        lines.append(f"fix:       {verdict.fix}")
    return "\n".join(lines)


def why(args: argparse.Namespace) -> int:
    told = asyncio.run(_story(args.entity, args.id))
    if args.json:
        print(json.dumps(
            {**dataclasses.asdict(told), "exit_status": told.exit_status},
            default=str, indent=2, ensure_ascii=False,
        ))  # fmt: skip
    else:
        print(render(told))
    return told.exit_status


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "why",
        help="why one row is missing or stale in its index, and the command that fixes it; "
        "exit 0 in sync, 1 not",
    )
    parser.add_argument("entity", help="the entity's name or table: listing, inventory, ...")
    parser.add_argument("id", help="the row's key")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=why)
