"""Stopping a background task: its end is waited for, its error raised, the stopper stays cancellable."""

from __future__ import annotations

import asyncio

import pytest

from bridge.cortex.simulator import SimulatorServer
from bridge.tasks import cancel_and_wait
from tests.support.cortex import BridgeFactory


async def test_a_cancelled_task_is_waited_for_until_it_has_ended() -> None:
    ended = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a moment, as a flush does
            ended.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done() and ended.is_set()


async def test_the_error_a_task_ends_with_is_raised() -> None:
    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_a_task_that_ended_before_is_fine() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
    assert not task.cancelled()


async def test_cancelling_the_stopper_is_not_swallowed_while_the_task_is_slow_to_end() -> None:
    """What ``suppress(CancelledError)`` around ``await task`` got wrong: the stopper's own
    cancellation was taken for the task's, and the stop went on waiting."""
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()  # takes as long as it takes to end

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    stopper.cancel()
    done, _ = await asyncio.wait([stopper], timeout=5)
    assert stopper in done and stopper.cancelled(), "the stopper's cancellation was swallowed"
    assert not task.done()
    release.set()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()


async def test_a_task_already_cancelling_is_not_interrupted_in_its_cleanup() -> None:
    cleaned = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # a second cancel would land here
            cleaned.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    task.cancel()  # the stopper cancels all its tasks first, then waits for each
    await asyncio.sleep(0.01)
    await cancel_and_wait(task)
    assert cleaned.is_set()


async def test_a_bridge_closes_its_queue_only_after_its_background_tasks_have_ended(
        sim: SimulatorServer, make_bridge: BridgeFactory) -> None:
    """A maintenance task mid-query when the drain reaches the queue would use a closed queue."""
    bridge = await make_bridge(sim)
    cleaned = asyncio.Event()

    async def mid_query() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.3)  # a query that is still running when it is cancelled
            cleaned.set()

    task = asyncio.create_task(mid_query())
    bridge._tasks.append(task)
    await asyncio.sleep(0)
    close = bridge.queue.close
    ended_before_close: list[bool] = []

    async def recording_close() -> None:
        ended_before_close.append(task.done() and cleaned.is_set())
        await close()

    bridge.queue.close = recording_close  # type: ignore[method-assign]
    await bridge.stop(deadline=2)
    assert ended_before_close == [True]
