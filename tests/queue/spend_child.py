"""A process that spends its request budget as fast as it may, until it is killed (``kill -9``).

``python -m tests.queue.spend_child DB URL LIMIT WINDOW``: the queue database at DB (a SQLite
file, or a PostgreSQL DSN: then the log is shared with every other process on it), a
:class:`QueueSpendLog` on it, a :class:`TokenBucket` of LIMIT requests per WINDOW seconds (burst
LIMIT, so a fresh bucket would spend a whole window at once) and a client calling URL's catalog
from four tasks. Prints ``ready`` once the bucket is built.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bridge.cortex.budget import TokenBucket
from bridge.cortex.client import CortexClient, NotSent
from bridge.queue import DurableQueue
from bridge.queue.backend import QueueBackend
from bridge.queue.postgres import PostgresQueue
from bridge.queue.spend import QueueSpendLog
from tests.support.cortex import SIM_TOKEN

TIMEOUT = 0.5


async def main(db: str, url: str, limit: int, window: float) -> None:
    queue: QueueBackend
    if db.startswith("postgresql://"):
        queue = await PostgresQueue.open(db, pool_size=2, sender_lock=False)
    else:
        queue = await DurableQueue.open(Path(db))
    bucket = TokenBucket(limit, limit, window_seconds=window, spend_log=QueueSpendLog(queue),
                         request_timeout_seconds=TIMEOUT)
    async with CortexClient(url, lambda: SIM_TOKEN, bucket, timeout_seconds=TIMEOUT) as client:
        print("ready", flush=True)

        async def spend() -> None:
            while True:
                try:
                    await client.verify_token()
                except NotSent:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(spend() for _ in range(4)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
