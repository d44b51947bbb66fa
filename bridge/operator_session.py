"""What a command that asks Cortex works with beside running bridges: the queue and the Cortex client.

The queue through an operator's connection (:func:`~bridge.queue.open.open_operator`, opened to
write), never the daemon's open, which would run crash recovery under a running bridge. The
client is the bridge's own (:func:`~bridge.cortex.client.client_from_settings`) under the
configured request budget, whose spend log is that connection
(:class:`~bridge.queue.operator_spend.OperatorSpendLog`): the command counts what running
bridges spent in the current minute, and they count what it spends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from bridge.config import QueueSettings, Settings
from bridge.cortex.budget import budget_from_settings
from bridge.cortex.client import CortexClient, client_from_settings
from bridge.logs import configure_logging
from bridge.queue.errors import QueueError
from bridge.queue.open import open_operator
from bridge.queue.operator import OperatorQueue
from bridge.queue.operator_spend import OperatorSpendLog

#: A command's requests wait less than the daemon's.
REQUEST_TIMEOUT_SECONDS = 10.0


@contextlib.contextmanager
def operator_queue(settings: QueueSettings) -> Iterator[OperatorQueue]:
    """The queue ``settings`` name, open to write; raises :class:`~bridge.queue.errors.QueueError`."""
    queue = open_operator(settings, write=True)
    try:
        yield queue
    finally:
        queue.close()


def configure_command_logging(settings: Settings) -> None:
    """Only warnings, on stderr: a command's output is its table."""
    configure_logging("warning", settings.log.format)


@contextlib.asynccontextmanager
async def cortex_client(settings: Settings, queue: OperatorQueue | None) -> AsyncIterator[CortexClient]:
    """The bridge's Cortex client under its request budget, counted in ``queue``'s spend log
    (without a queue, in this process only)."""
    spend = OperatorSpendLog(queue) if queue is not None else None
    budget = budget_from_settings(settings.cortex, spend)
    async with client_from_settings(settings.cortex, budget, timeout_seconds=REQUEST_TIMEOUT_SECONDS) as client:
        yield client



@contextlib.asynccontextmanager
async def counted_client(settings: Settings) -> AsyncIterator[CortexClient]:
    """:func:`cortex_client` counted in the configured queue's spend log when that queue can be
    opened (a bridge ran, or runs, on it); before any bridge ran there is no window to share."""
    try:
        queue: OperatorQueue | None = open_operator(settings.queue, write=True)
    except QueueError:
        queue = None
    try:
        async with cortex_client(settings, queue) as client:
            yield client
    finally:
        if queue is not None:
            queue.close()
