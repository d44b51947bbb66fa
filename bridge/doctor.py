"""``cortex-bridge doctor``: why Cortex "shows nothing", one check per line.

Checks, in order, each a row of the table (check, status, why):

* ``token``: a token is configured, Cortex accepts it (``GET /api/v1/catalog?pageSize=1``, as the
  official CLI checks) and when it expires (the JWT ``exp``, read locally). When this fails the
  other Cortex checks are skipped: every answer would be the same 401.
* ``metric KEY``: each metric key the sources name has a custom metric definition.
* ``entity TAG``: each entity a static map names exists.
* ``queue``: the oldest undelivered record and why it waits (parked after a 404, backing off
  after an error, due but not claimed, being read back); ``dead letters`` counts what was given up.
* ``audit log``: through "Retrieve audit logs" filtered to the bridge's API key
  (``cortex.api_key_identifier``), whether Cortex recorded writes in the last minutes, compared
  with what the queue's history says the bridge delivered.

``ok`` and ``warn`` rows exit 0; any ``FAIL`` exits 1. Every request goes through the bridge's
client and request budget, counted in the queue's spend log (bridge/operator_session.py). No
secret is printed: the token never, URLs redacted, queue errors never quote a DSN.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bridge.config import ConfigError, Settings, redact_url
from bridge.cortex import inspection
from bridge.cortex.client import Ambiguous, CortexClient, CortexResponse, NotSent
from bridge.cortex.token import token_expiry
from bridge.operator_session import configure_command_logging, cortex_client
from bridge.queue.errors import QueueError
from bridge.queue.open import open_operator
from bridge.queue.operator import OperatorQueue
from bridge.queue_commands import queue_settings_of, settings_of
from bridge.records import format_timestamp
from bridge.sources.references import configured_references

Status = Literal["ok", "warn", "FAIL", "skip"]
#: A token expiring sooner than this is a warning (as the daemon warns at start).
EXPIRY_WARNING = timedelta(days=7)


@dataclass(frozen=True)
class Finding:
    """One row of the table."""

    check: str
    status: Status
    detail: str


@dataclass(frozen=True)
class DoctorOptions:
    """What the command line chooses: the audit window, when a queue counts as stuck, the key."""

    since_minutes: float = 60.0
    stuck_after_seconds: float = 300.0
    key_identifier: str | None = None


def render(findings: list[Finding]) -> str:
    """The table: aligned columns, one finding per line, then a summary line."""
    width = max([len("CHECK"), *(len(f.check) for f in findings)])
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    lines += [f"{f.check:<{width}}  {f.status:<6}  {f.detail}" for f in findings]
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    lines.append(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "all checks passed")
    return "\n".join(lines)


def _when(epoch: float) -> str:
    return format_timestamp(datetime.fromtimestamp(epoch, UTC))


async def check_token(settings: Settings, client: CortexClient) -> Finding:
    """Configured, accepted by Cortex, and not about to expire."""
    try:
        token = settings.cortex.token_value()
    except ConfigError as exc:
        return Finding("token", "FAIL", str(exc))
    if not token:
        return Finding("token", "FAIL", "no Cortex token configured (cortex.token or cortex.token_file)")
    where = redact_url(settings.cortex.url)
    try:
        response = await client.verify_token()
    except (NotSent, Ambiguous) as exc:
        return Finding("token", "FAIL", f"Cortex at {where} did not answer: {redact_url(str(exc))}")
    except Exception as exc:  # e.g. a URL the HTTP client refuses: a doctor answers, never a traceback
        return Finding("token", "FAIL", f"Cortex at {where} cannot be asked: {_described(exc)}")
    expiry = token_expiry(token)
    if response.status == 401:
        why = (f"it expired at {_when(expiry)}" if expiry is not None and expiry <= time.time()
               else "revoked, mistyped or of another tenant")
        return Finding("token", "FAIL", f"Cortex at {where} rejected the token (401): {why}; set a valid API key"
                       " in cortex.token or cortex.token_file")
    if not response.ok:
        return Finding("token", "FAIL", f"token check answered {response.status}: {response.message()}")
    if expiry is None:
        return Finding("token", "ok", f"Cortex at {where} accepts the token; its expiry is unknown (not a JWT)")
    left = expiry - time.time()
    if left <= 0:
        return Finding("token", "FAIL", f"the token expired at {_when(expiry)}")
    days = left / 86400
    if left < EXPIRY_WARNING.total_seconds():
        return Finding("token", "warn", f"Cortex accepts the token, but it expires at {_when(expiry)}"
                       f" (in {days:.1f} days): rotate it")
    return Finding("token", "ok", f"Cortex at {where} accepts the token; it expires at {_when(expiry)}"
                   f" (in {days:.0f} days)")


def _unknown(response: CortexResponse) -> str:
    return f"cannot tell: Cortex answered {response.status}: {response.message()}"


async def _ask(send: Awaitable[CortexResponse]) -> CortexResponse | str:
    """An answer, or why there is none."""
    try:
        response = await send
    except (NotSent, Ambiguous) as exc:
        return f"cannot tell: {redact_url(str(exc))}"
    except Exception as exc:
        return f"cannot tell: {_described(exc)}"
    return response


def _described(exc: Exception) -> str:
    return redact_url(f"{type(exc).__name__}: {exc}")


async def check_metric_keys(keys: dict[str, list[str]], client: CortexClient) -> list[Finding]:
    """A row per configured metric key: its custom metric definition exists."""
    if not keys:
        return [Finding("metric keys", "ok", "the sources name no metric key")]
    found = []
    for key, sources in sorted(keys.items()):
        answer = await _ask(inspection.metric_definition(client, key))
        named = f"(named by {', '.join(sources)})"
        if isinstance(answer, str):
            found.append(Finding(f"metric {key}", "warn", answer))
        elif answer.ok:
            found.append(Finding(f"metric {key}", "ok", f"custom metric definition exists {named}"))
        elif answer.status == 404:
            found.append(Finding(f"metric {key}", "FAIL", f"no custom metric definition {named}: Cortex answers"
                                 " its points 404, they are parked, then dead-lettered; define the metric"
                                 " (type PUBLIC_API) in Eng Intelligence"))
        else:
            found.append(Finding(f"metric {key}", "warn", _unknown(answer)))
    return found


async def check_entities(tags: dict[str, list[str]], client: CortexClient) -> list[Finding]:
    """A row per entity of a static map: it exists in the catalog."""
    if not tags:
        return [Finding("entities", "ok", "no static map names an entity")]
    found = []
    for tag, sources in sorted(tags.items()):
        answer = await _ask(inspection.entity_details(client, tag))
        named = f"(static map of {', '.join(sources)})"
        if isinstance(answer, str):
            found.append(Finding(f"entity {tag}", "warn", answer))
        elif answer.ok:
            found.append(Finding(f"entity {tag}", "ok", f"exists {named}"))
        elif answer.status == 404:
            found.append(Finding(f"entity {tag}", "FAIL", f"no such entity in Cortex {named}: its records are"
                                 " parked, then dead-lettered; create it or fix the map"))
        else:
            found.append(Finding(f"entity {tag}", "warn", _unknown(answer)))
    return found


def why_waiting(oldest: dict[str, Any]) -> str:
    """What the oldest record waits for, in an operator's words."""
    state, error = oldest["state"], oldest.get("last_error")
    if state == "parked":
        return (f"parked after a 404 ({error}); next try at {oldest['next_attempt_at']}: create what is"
                " missing, then `cortex-bridge queue retry --parked`")
    if state == "ambiguous":
        return "its request's outcome is unknown: it waits to be read back from Cortex"
    if state in ("sending", "claimed"):
        return "being sent now"
    if oldest["due_in_seconds"] > 0 and error:
        return f"backing off after: {error} (attempt {oldest['attempts']}, next at {oldest['next_attempt_at']})"
    return ("due, but no bridge has claimed it: is a bridge running and sending? (/healthz/delivery says why"
            " not: token rejected, circuit breaker open, rate limited)")


def check_queue(queue: OperatorQueue, stuck_after: float) -> list[Finding]:
    """The oldest record and why it waits; the dead letters."""
    stats, oldest = queue.stats(), queue.oldest_record()
    found = []
    if oldest is None:
        found.append(Finding("queue", "ok", "empty: everything accepted was delivered or dead-lettered"))
    else:
        what = f"oldest of {stats['undelivered']}: {oldest['kind']} {oldest['id']} for {oldest['entity']}" \
               f", waiting {oldest['age_seconds']:.0f} s"
        status: Status = "FAIL" if oldest["age_seconds"] > stuck_after else "ok"
        found.append(Finding("queue", status, f"{what}; {why_waiting(oldest)}"))
    if stats["dead_letters"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(stats["dead_by_reason"].items()))
        found.append(Finding("dead letters", "warn", f"{stats['dead_letters']} ({reasons}): `cortex-bridge dlq list`"))
    return found


async def check_audit_log(client: CortexClient, queue: OperatorQueue | None, options: DoctorOptions) -> Finding:
    """Whether Cortex recorded the bridge's writes since the window started."""
    since = time.time() - options.since_minutes * 60
    key = options.key_identifier
    answer = await _ask(inspection.audit_writes(client, key_identifier=key, since=datetime.fromtimestamp(since, UTC)))
    if isinstance(answer, str):
        return Finding("audit log", "warn", answer)
    if answer.status == 403:
        return Finding("audit log", "warn", "cannot read the audit log (403): the API key lacks the 'View audit"
                       " logs' permission")
    if not answer.ok or not isinstance(answer.body, dict):
        return Finding("audit log", "warn", _unknown(answer))
    recorded = int(answer.body.get("total") or 0)
    window = f"in the last {options.since_minutes:g} min"
    if key is None:
        return Finding("audit log", "warn", f"Cortex recorded {recorded} write(s) by API keys {window}; set"
                       " cortex.api_key_identifier (or --api-key-identifier) to check the bridge's own")
    if queue is None:
        return Finding("audit log", "ok", f"Cortex recorded {recorded} write(s) by {key} {window}")
    delivered = queue.recent_deliveries(since)
    count = sum(delivered.values())
    if count and not recorded:
        return Finding("audit log", "FAIL", f"the bridge delivered {count} record(s) {window}, but Cortex recorded"
                       f" no write by {key}: is {redact_url(client.base_url)} the tenant you are looking at, and"
                       f" {key} the bridge's key?")
    seen = {str(entry.get("objectIdentifier")) for entry in answer.body.get("logs") or []}
    return Finding("audit log", "ok", f"Cortex recorded {recorded} write(s) by {key} {window}; the bridge delivered"
                   f" {count} record(s) to {len(delivered)} entities ({len(seen & set(delivered))} of them in"
                   " the audit log's first page)")


async def diagnose(settings: Settings, client: CortexClient, queue: OperatorQueue | None,
                   queue_problem: str | None, options: DoctorOptions) -> list[Finding]:
    """Every check's rows, in the order of the module docstring."""
    references = configured_references(settings.sources)
    token = await check_token(settings, client)
    findings = [token]
    if token.status == "FAIL":
        skipped = "skipped: the token check failed"
        findings += [Finding(f"metric {k}", "skip", skipped) for k in sorted(references.metric_keys)]
        findings += [Finding(f"entity {t}", "skip", skipped) for t in sorted(references.entities)]
    else:
        findings += await check_metric_keys(references.metric_keys, client)
        findings += await check_entities(references.entities, client)
    if queue is None:
        findings.append(Finding("queue", "FAIL", queue_problem or "no queue"))
    else:
        try:
            findings += check_queue(queue, options.stuck_after_seconds)
        except QueueError as exc:
            findings.append(Finding("queue", "FAIL", str(exc)))
    if token.status == "FAIL":
        findings.append(Finding("audit log", "skip", "skipped: the token check failed"))
    else:
        findings.append(await check_audit_log(client, queue, options))
    return findings


def cmd_doctor(args: argparse.Namespace) -> int:
    """``cortex-bridge doctor``: print the table; 1 when a check failed."""
    settings = settings_of(args)
    configure_command_logging(settings)
    options = DoctorOptions(since_minutes=args.since_minutes, stuck_after_seconds=args.stuck_after,
                            key_identifier=args.api_key_identifier or settings.cortex.api_key_identifier)

    async def run() -> list[Finding]:
        queue, problem = None, None
        try:
            queue = open_operator(queue_settings_of(args), write=True)
        except QueueError as exc:
            problem = f"cannot open the queue: {exc}"
        try:
            async with cortex_client(settings, queue) as client:
                return await diagnose(settings, client, queue, problem, options)
        finally:
            if queue is not None:
                queue.close()

    findings = asyncio.run(run())
    print(render(findings))
    return 1 if any(f.status == "FAIL" for f in findings) else 0
