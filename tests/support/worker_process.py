"""A worker process for the tests: the real app from PROCQUEUE_* settings in the
environment, plus the test tasks. `python -m tests.support.worker_process`."""

from __future__ import annotations

import asyncio
import logging

from procqueue.app import build_app
from procqueue.features import load_settings
from tests.support import tasks


async def main() -> None:
    app = build_app(load_settings())
    tasks.register(app)
    async with app.open_async():
        await app.run_worker_async(name="subprocess")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
