"""The group commit's delay on a real SQLite queue: appends arriving together share one fsync,
a lone append is never held back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.queue import DurableQueue, QueueUnavailable, inspect
from bridge.queue.group_commit import AppendResult, Submission
from tests.queue.test_queue import metric


async def counting_commits(path: Path) -> tuple[DurableQueue, list[int]]:
    """A queue whose commits record their batch sizes (the commit itself is the real one)."""
    queue = await DurableQueue.open(path / "q.db")
    sizes: list[int] = []
    commit = queue._commit

    async def recorded(batch: list[Submission]) -> list[AppendResult]:
        sizes.append(len(batch))
        return await commit(batch)

    queue._commit = recorded  # type: ignore[method-assign]
    return queue, sizes


async def shared_commit(queue: DurableQueue, first: int) -> None:
    """Four appends in one tick: the writer takes them in one commit."""
    await asyncio.gather(*[queue.append([metric(first + i)]) for i in range(4)])


async def staggered(queue: DurableQueue, first: int, count: int, gap: float) -> None:
    async def one(i: int) -> None:
        await asyncio.sleep(i * gap)
        await queue.append([metric(first + i)])
    await asyncio.gather(*[one(i) for i in range(count)])


async def test_a_lone_append_after_a_lone_commit_is_never_delayed(tmp_path: Path) -> None:
    queue, sizes = await counting_commits(tmp_path)
    queue.commit_delay_seconds = 3600
    for i in range(5):
        await asyncio.wait_for(queue.append([metric(i)]), 10)
    assert sizes == [1, 1, 1, 1, 1]
    await queue.close()


async def test_appends_arriving_during_the_delay_share_one_commit(tmp_path: Path) -> None:
    queue, sizes = await counting_commits(tmp_path)
    queue.commit_delay_seconds = 0.3
    await shared_commit(queue, 0)
    # Three appends 20 ms apart: without the delay each would take a commit of its own.
    await staggered(queue, 10, 3, 0.02)
    assert sizes == [4, 3]
    await queue.close()
    assert inspect.stats(inspect.open_file(tmp_path / "q.db"))["undelivered"] == 7


async def test_enough_pending_appends_end_the_delay(tmp_path: Path) -> None:
    queue, sizes = await counting_commits(tmp_path)
    queue.commit_delay_seconds = 3600
    queue.commit_delay_enough = 3
    await shared_commit(queue, 0)
    await asyncio.wait_for(staggered(queue, 10, 3, 0.02), 10)
    assert sizes == [4, 3]
    await queue.close()


async def test_a_queue_closed_during_the_delay_still_stores_what_was_pending(tmp_path: Path) -> None:
    queue, sizes = await counting_commits(tmp_path)
    queue.commit_delay_seconds = 0.2
    await shared_commit(queue, 0)
    pending = asyncio.ensure_future(queue.append([metric(10)]))
    await asyncio.sleep(0.05)  # the writer is in its delay
    await asyncio.wait_for(queue.close(), 10)
    assert (await asyncio.wait_for(pending, 1)).new_ids
    assert inspect.stats(inspect.open_file(tmp_path / "q.db"))["undelivered"] == 5


async def test_a_queue_closed_during_a_commit_answers_its_producers(tmp_path: Path) -> None:
    queue = await DurableQueue.open(tmp_path / "q.db")
    commit = queue._commit
    committing = asyncio.Event()

    async def slow(batch: list[Submission]) -> list[AppendResult]:
        committing.set()
        await asyncio.sleep(0.2)
        return await commit(batch)

    queue._commit = slow  # type: ignore[method-assign]
    pending = asyncio.ensure_future(queue.append([metric(1)]))
    await committing.wait()
    # The batch has left the pending list: the close must still wait for its commit.
    await asyncio.wait_for(queue.close(), 10)
    assert (await asyncio.wait_for(pending, 1)).new_ids
    assert inspect.stats(inspect.open_file(tmp_path / "q.db"))["undelivered"] == 1


async def test_an_append_after_close_is_refused_not_left_waiting(tmp_path: Path) -> None:
    queue = await DurableQueue.open(tmp_path / "q.db")
    await queue.close()
    with pytest.raises(QueueUnavailable):
        await asyncio.wait_for(queue.append([metric(1)]), 5)
