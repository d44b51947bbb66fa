"""Stopping a background task without swallowing the stopper's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; re-raise the error it ended with, if any.

    ``task.cancel()`` then ``await task`` under ``suppress(CancelledError)`` also swallows a
    cancellation of the caller itself: a stop that is being cancelled (a shutdown deadline, a test
    tearing down) carries on as if it were not, and waits for as long as the task takes.
    ``asyncio.wait`` raises nothing of the task's and lets the caller's cancellation through.
    A task already asked to cancel is not asked again: a second request would interrupt the
    cleanup it is running (a lock released in a ``finally``, a last flush).
    """
    if not task.cancelling():
        task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error
