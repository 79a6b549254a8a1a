"""Time dashboard pages over HTTP: the real Starlette app through httpx's ASGI
transport (templates included), signed in as a local admin."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from procqueue.dashboard.app import create_app
from procqueue.dashboard.security import access_for


async def time_pages(
    settings: Any, pages: dict[str, str], runs: int, watched: dict[str, float] | None = None
) -> dict[str, list[float]]:
    """Seconds per request of each page (name -> path), after one warm-up request.
    A page in `watched` (name -> seconds) is requested that often, as by a user watching
    it: the overview's snapshot is then read in the background meanwhile, as it is for
    that user, and some requests meet a read under way."""
    app = create_app(settings, access_for(settings, "127.0.0.1", local_only=True))
    timings: dict[str, list[float]] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for name, path in pages.items():
                await client.get(path)  # warm the pool and the plan cache
                samples = []
                for _ in range(runs):
                    await asyncio.sleep((watched or {}).get(name, 0.0))
                    started = time.perf_counter()
                    response = await client.get(path)
                    samples.append(time.perf_counter() - started)
                    assert response.status_code == 200, (path, response.status_code)
                timings[name] = samples
    return timings
