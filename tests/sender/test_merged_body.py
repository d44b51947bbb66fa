"""The merged deploy of a coalesced group (bridge/sender/coalesce.py) stays bounded however many
times one change is reported."""

from __future__ import annotations

from bridge.records import BRIDGE_ID_KEY, DeployRecord
from bridge.sender.coalesce import MAX_LISTED, merged_body
from bridge.sources.native import parse_native


def reports(n: int) -> list[DeployRecord]:
    records = parse_native([{"kind": "deploy", "entity": "svc", "title": f"report {i}", "sha": "abc",
                             "environment": "prod", "timestamp": 1_700_000_000 + i, "url": f"https://ci/{i}"}
                            for i in range(n)], source="github")
    assert all(isinstance(r, DeployRecord) for r in records)
    return [r for r in records if isinstance(r, DeployRecord)]


def test_a_few_reports_are_all_listed() -> None:
    group = reports(3)
    custom = merged_body(group[0], group, "first-report")["customData"]
    assert [s["id"] for s in custom["sources"]] == [r.id for r in group]
    assert custom["urls"] == [r.url for r in group]
    assert "omitted" not in custom and custom[BRIDGE_ID_KEY] == group[0].id


def test_a_change_reported_thousands_of_times_lists_the_first_ones_and_counts_the_rest() -> None:
    group = reports(MAX_LISTED + 1000)
    body = merged_body(group[0], group, "rollout-complete")
    custom = body["customData"]
    assert [s["id"] for s in custom["sources"]] == [r.id for r in group[:MAX_LISTED]]
    assert len(custom["urls"]) == MAX_LISTED
    assert custom["omitted"] == {"sources": 1000, "urls": 1000}
    assert body["timestamp"].startswith("2023-11-14T22:") and custom[BRIDGE_ID_KEY] == group[0].id
