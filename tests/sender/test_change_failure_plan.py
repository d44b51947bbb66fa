"""When a change failure's event and mark stop waiting for their deploy's uuid (bridge/sender/change_failure.py)."""

from __future__ import annotations

from bridge.queue.deploy_groups import CreatorState, DeployGroup
from bridge.records import DeployRecord
from bridge.sender.change_failure import may_still_be_created
from bridge.sources.native import parse_native


def report(n: int, source: str = "github") -> DeployRecord:
    [record] = parse_native([{"kind": "deploy", "entity": "svc", "title": f"deploy {n}", "sha": "abc",
                              "timestamp": 1_700_000_000 + n}], source=source)
    assert isinstance(record, DeployRecord)
    return record


def group(creator: CreatorState, uuid: str | None, *members: DeployRecord) -> DeployGroup:
    return DeployGroup(1, report(1).id, creator, uuid, list(members))


def test_waits_only_while_someone_may_still_create_the_deploy() -> None:
    first, second, mark = report(1), report(2, "k8s"), report(3, "change-failure")
    assert may_still_be_created(group("queued", None, first, mark))
    assert not may_still_be_created(group("delivered", "uuid-1", first, mark))
    # The creator's POST failed for good: another report takes its place, or nobody is left.
    assert may_still_be_created(group("dead", None, second, mark))
    assert not may_still_be_created(group("dead", None, mark))
    # Delivered, but Cortex named no uuid: only another report could still create it.
    assert not may_still_be_created(group("delivered", None, first, mark))
    assert may_still_be_created(group("delivered", None, first, second, mark))
