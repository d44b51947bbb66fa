"""``cortex-bridge demo``: the whole path on one machine, then a summary of what Cortex received.

Starts the Cortex simulator and a bridge (SQLite queue in a temporary directory, or in the
directory given with ``--keep``), posts sample
inputs through the bridge's real HTTP endpoints (native records, and a real GitHub
``deployment_status`` webhook, signed and delivered twice as GitHub redelivers), waits until the queue is empty and prints, per
record kind, how many were sent, delivered and dead-lettered and how many Cortex requests it took,
then the exact commands (with ``--queue PATH``) that show the queue it used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import secrets
import shlex
import sys
import tempfile
from collections import Counter
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp

from bridge.app import Bridge
from bridge.config import load_settings
from bridge.cortex.simulator import SimulatorConfig, SimulatorServer
from bridge.logs import configure_logging
from bridge.queue import files, inspect
from bridge.records import format_timestamp, utc_now

KINDS = ("deploy", "event", "metric", "custom_data")
DEMO_WEBHOOK_SECRET = "demo-webhook-secret"
GITHUB_FIXTURE = "demo_data/github.deployment_status.success.json"
GITHUB_DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
#: Where the summary suggests keeping the queue when the demo ran in a temporary directory.
SUGGESTED_KEEP = Path("cortex-bridge-demo")
ENDPOINT_KIND = {"deploys": "deploy", "custom-events": "event", "bulk": "metric", "custom-data": "custom_data"}


def sample_records(entities: list[str], metric_keys: list[str], points: int, seed: int = 7) -> list[dict[str, Any]]:
    """Deterministic sample inputs: deploys, events, metric points, custom data, one too-old point."""
    rng = random.Random(seed)
    now = utc_now().replace(microsecond=0)
    out: list[dict[str, Any]] = []
    for i, entity in enumerate(entities):
        out.append({"kind": "deploy", "entity": entity, "title": f"Deploy {entity} v1.{i}.0",
                    "timestamp": format_timestamp(now - timedelta(minutes=30 - i)), "type": "DEPLOY",
                    "sha": f"{rng.getrandbits(160):040x}", "environment": "production",
                    "deployer": {"name": "demo", "email": "demo@example.com"}})
    out.append({"kind": "deploy", "entity": entities[0], "title": f"Roll back {entities[0]} to v1.0.0",
                "timestamp": format_timestamp(now - timedelta(minutes=5)), "type": "ROLLBACK",
                "environment": "production"})
    for entity in entities[:3]:
        out.append({"kind": "event", "entity": entity, "type": "DEPLOY_FAILED", "title": f"Canary of {entity} failed",
                    "timestamp": format_timestamp(now - timedelta(minutes=10)), "description": "error budget burn"})
    for n in range(points):
        entity = entities[n % len(entities)]
        key = metric_keys[(n // len(entities)) % len(metric_keys)]
        out.append({"kind": "metric", "entity": entity, "key": key,
                    "timestamp": format_timestamp(now - timedelta(seconds=n)), "value": round(rng.uniform(5, 600), 1)})
    out.append({"kind": "metric", "entity": entities[0], "key": metric_keys[0],
                "timestamp": format_timestamp(now - timedelta(days=200)), "value": 1.0})
    for entity in entities:
        out.append({"kind": "custom_data", "entity": entity, "key": "last-deployed-by", "value": "cortex-bridge demo"})
    return out


def _summary(sent: Counter[str], stored: dict[str, Any], requests: list[dict[str, Any]], dead: Counter[str]) -> str:
    counts = stored["counts"]
    delivered = {"deploy": counts["deploys"], "event": counts["events"], "metric": counts["metric_points"],
                 "custom_data": counts["custom_data"]}
    used: Counter[str] = Counter()
    for req in requests:
        if req["method"] in ("POST", "PUT"):
            used[ENDPOINT_KIND.get(req["path"].rstrip("/").rsplit("/", 1)[-1], "other")] += 1
    rows = [("kind", "sent", "in Cortex", "requests", "dead-lettered")]
    for kind in KINDS:
        rows.append((kind, str(sent[kind]), str(delivered[kind]), str(used[kind]), str(dead[kind])))
    rows.append(("total", str(sum(sent.values())), str(sum(delivered.values())), str(len(requests)),
                 str(sum(dead.values()))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def follow_ups(queue: Path, dead_id: str | None) -> str:
    """The commands that show the demo's queue, each runnable as printed."""
    where = shlex.quote(str(queue))
    lines = [f"  cortex-bridge queue stats --queue {where}",
             f"  cortex-bridge trace {GITHUB_DELIVERY} --queue {where}   # the GitHub webhook, to its Cortex uuid",
             f"  cortex-bridge dlq list --queue {where}"]
    if dead_id is not None:
        lines.append(f"  cortex-bridge dlq show {shlex.quote(dead_id)} --queue {where}")
    return "\n".join(lines)


def prepare_keep(keep: Path) -> None:
    """Create ``keep`` for the demo's queue; raises ValueError when it holds one already."""
    if (keep / "queue.db").exists():
        raise ValueError(f"{keep / 'queue.db'} exists (an earlier demo?): remove it or give another directory")
    keep.mkdir(parents=True, exist_ok=True)


async def run_demo(*, serve: bool = False, records: int = 400, timeout: float = 60.0,
                   keep: Path | None = None) -> int:
    """Run the demo; with ``keep`` (see :func:`prepare_keep`), its queue stays in ``keep/queue.db``."""
    configure_logging("warning", "console")
    example = resources.files("bridge.cortex.simulator").joinpath("example.yaml")
    config = SimulatorConfig.from_yaml(Path(str(example)))
    entities = [e.tag for e in config.entities]
    with contextlib.ExitStack() as cleanup:
        if keep is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="cortex-bridge-demo-"))
        else:
            tmp = str(keep)
        async with SimulatorServer(config) as sim:
            ingest_token = secrets.token_urlsafe(16)  # the demo's /v1/records needs one like any bridge
            settings = load_settings(
                None,
                sources=[github_source(entities[0])],
                ingest={"token": ingest_token},
                cortex={"url": sim.url, "token": config.tokens[0]},
                queue={"path": Path(tmp) / "queue.db"},
                http={"host": "127.0.0.1", "port": 0},
                metrics={"host": "127.0.0.1", "port": 0},
                log={"level": "warning"},
            )
            bridge = await Bridge.create(settings)
            await bridge.start()
            try:
                inputs = sample_records(entities, config.metric_keys, records)
                sent = Counter(r["kind"] for r in inputs)
                url = f"http://127.0.0.1:{bridge.ingest_port}/v1/records"
                auth = {"Authorization": f"Bearer {ingest_token}"}
                async with aiohttp.ClientSession() as http:
                    for start in range(0, len(inputs), 100):
                        async with http.post(url, json={"records": inputs[start:start + 100]}, headers=auth) as resp:
                            if resp.status != 202:
                                print(f"demo: ingest answered {resp.status}: {await resp.text()}", file=sys.stderr)
                                return 1
                    webhook = f"http://127.0.0.1:{bridge.ingest_port}/webhooks/github"
                    for _ in range(2):  # GitHub redelivers: the same delivery id is stored once
                        if not await post_github_delivery(http, webhook):
                            return 1
                    sent["deploy"] += 1
                    loop = asyncio.get_running_loop()
                    end = loop.time() + timeout
                    while bridge.queue.depth and loop.time() < end:
                        await asyncio.sleep(0.1)
                stats = await bridge.queue.stats()
                print(f"Cortex simulator: {sim.url}   bridge ingest: http://127.0.0.1:{bridge.ingest_port}"
                      f"   metrics: http://127.0.0.1:{bridge.metrics_port}/metrics\n")
                dead = Counter({k: n for k, n in await _dead_by_kind(bridge)})
                print(_summary(sent, sim.store.snapshot(), list(sim.store.requests), dead))
                print("\nThe GitHub deployment_status webhook was delivered twice (a redelivery, same "
                      "X-GitHub-Delivery) and is stored once.")
                queue = Path(tmp) / "queue.db"
                if dead:
                    print("\nDead letters are kept with their reason (here: a metric point older than "
                          "Cortex's 6-month window).")
                dead_entries = files.with_file(queue, lambda c: inspect.dlq_list(c, limit=1))
                dead_id = dead_entries[0]["id"] if dead_entries else None
                if keep is not None:
                    print(f"\nThe queue is kept in {queue}. Look at it with:\n{follow_ups(queue, dead_id)}")
                elif serve:
                    print(f"\nWhile this runs, look at the queue with:\n{follow_ups(queue, dead_id)}")
                else:
                    print(f"\nThe queue was in a temporary directory, deleted on exit. To look at it, run "
                          f"`cortex-bridge demo --keep {SUGGESTED_KEEP}`, then:\n"
                          f"{follow_ups(SUGGESTED_KEEP / 'queue.db', dead_id)}")
                if stats["undelivered"]:
                    print(f"\n{stats['undelivered']} record(s) still queued after {timeout:.0f} s", file=sys.stderr)
                    return 1
                if serve:
                    print("\nServing until Ctrl-C. Try:\n"
                          f"  curl -s -XPOST http://127.0.0.1:{bridge.ingest_port}/v1/records -H 'Content-Type: "
                          f"application/json' -H 'Authorization: Bearer {ingest_token}' -d '{{\"kind\":\"event\",\"entity\":\"{entities[0]}\",\"type\":\"HELLO\","
                          f"\"title\":\"hi\",\"timestamp\":\"{format_timestamp(utc_now())}\"}}'\n"
                          f"  curl -s {sim.url}/_sim/state")
                    await asyncio.Event().wait()
            finally:
                await bridge.stop(deadline=5)
    return 0


def github_source(entity: str) -> dict[str, Any]:
    """A GitHub webhook source whose sample repository maps to ``entity``."""
    return {"name": "github", "type": "github", "secrets": [DEMO_WEBHOOK_SECRET],
            "entity": {"static": {"Codertocat/Hello-World": entity}, "lookup": False}}


async def post_github_delivery(http: aiohttp.ClientSession, url: str) -> bool:
    """POST a real GitHub ``deployment_status`` payload, signed as GitHub signs it."""
    body = resources.files("bridge").joinpath(GITHUB_FIXTURE).read_bytes()
    signature = hmac.new(DEMO_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "deployment_status",
               "X-GitHub-Delivery": GITHUB_DELIVERY,
               "X-Hub-Signature-256": f"sha256={signature}"}
    async with http.post(url, data=body, headers=headers) as resp:
        if resp.status != 202:
            print(f"demo: webhook answered {resp.status}: {await resp.text()}", file=sys.stderr)
            return False
    return True


async def _dead_by_kind(bridge: Bridge) -> list[tuple[str, int]]:
    return list((await bridge.queue.dead_counts_by_kind()).items())
