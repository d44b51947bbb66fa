"""``cortex-bridge dlq register-entities --reason entity-unresolved``: create the entities, replay the records.

A record whose entity the bridge could not resolve is kept as a dead letter under a best-guess
tag (the last segment of its repository or subject key) and, since this release, the git
repository its input named. This command proposes one minimal entity per such tag (tag, a name,
the repository where known), asks Cortex first whether it exists already (then it is only
replayed: a patch would overwrite what an owner set) and has Cortex validate each new one with
a dry run of "Create or patch entity". With ``--yes`` it creates them and replays their dead
letters; with ``--dry-run`` it stops after the proposal; with neither it refuses (exit 2), so
nothing is created by accident. Dead letters without a usable tag are left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.config import Settings, redact_url
from bridge.cortex import inspection
from bridge.cortex.client import Ambiguous, CortexClient, NotSent
from bridge.cortex.descriptors import GitProvider, create_or_patch_entity, entity_descriptor
from bridge.operator_session import configure_command_logging, cortex_client, operator_queue
from bridge.queue.errors import QueueError
from bridge.queue.operator import OperatorQueue
from bridge.queue_commands import CliError, queue_settings_of, settings_of
from bridge.sources.entity import NO_TAG, UNRESOLVED, is_tag

Plan = Literal["create", "replay only", "refused", "unknown"]


@dataclass
class Proposal:
    """One entity to register and the dead letters waiting for it."""

    tag: str
    repository: str | None
    provider: GitProvider
    ids: list[str] = field(default_factory=list)
    plan: Plan = "unknown"
    why: str = ""

    @property
    def descriptor(self) -> str:
        """The YAML sent to Cortex."""
        return entity_descriptor(self.tag, name=self.tag, repository=self.repository, provider=self.provider)


def proposals(queue: OperatorQueue, settings: Settings, *, limit: int,
              provider: GitProvider | None = None) -> tuple[list[Proposal], int]:
    """Proposals for the newest ``limit`` ``entity-unresolved`` dead letters, and how many had no tag.

    The git provider is ``provider``, else the dead letter's source type's (``gitlab``), else github.
    """
    types = {str(s.get("name")): str(s.get("type")) for s in settings.sources}
    by_tag: dict[str, Proposal] = {}
    untagged = 0
    for entry in queue.dlq_list(limit=limit, reason=UNRESOLVED):
        shown = queue.dlq_show(entry["id"])
        record: Any = shown.get("record") if shown else None
        tag = record.get("entity") if isinstance(record, dict) else None
        if not isinstance(tag, str) or tag == NO_TAG or not is_tag(tag):
            untagged += 1
            continue
        origin = record.get("provenance") or {}
        repository = origin.get("repository") if isinstance(origin.get("repository"), str) else None
        proposal = by_tag.get(tag)
        if proposal is None:
            kind = provider or ("gitlab" if types.get(str(origin.get("source"))) == "gitlab" else "github")
            proposal = by_tag[tag] = Proposal(tag, repository, kind)
        proposal.repository = proposal.repository or repository
        proposal.ids.append(entry["id"])
    return sorted(by_tag.values(), key=lambda p: p.tag), untagged


def _failure(exc: Exception) -> str:
    if isinstance(exc, NotSent | Ambiguous):
        return f"no answer from Cortex: {redact_url(str(exc))}"
    return redact_url(f"cannot ask Cortex: {type(exc).__name__}: {exc}")


async def judge(client: CortexClient, proposal: Proposal) -> None:
    """Set the proposal's plan: replay only (exists), create (the dry run passed), refused, unknown."""
    try:
        found = await inspection.entity_details(client, proposal.tag)
        if found.ok:
            proposal.plan, proposal.why = "replay only", "exists in Cortex already"
            return
        if found.status != 404:
            proposal.plan, proposal.why = "unknown", f"lookup answered {found.status}: {found.message()}"
            return
        checked = await create_or_patch_entity(client, proposal.descriptor, dry_run=True)
    except Exception as exc:  # every proposal gets an answer, never a traceback
        proposal.plan, proposal.why = "unknown", _failure(exc)
        return
    if checked.ok:
        proposal.plan, proposal.why = "create", "dry run passed"
    else:
        proposal.plan, proposal.why = "refused", f"dry run answered {checked.status}: {checked.message()}"


async def create(client: CortexClient, proposal: Proposal) -> bool:
    """Create the proposed entity; whether Cortex stored it (``why`` says otherwise)."""
    try:
        response = await create_or_patch_entity(client, proposal.descriptor, dry_run=False)
    except Exception as exc:
        proposal.why = _failure(exc)
        return False
    if not response.ok:
        proposal.why = f"create answered {response.status}: {response.message()}"
        return False
    proposal.why = "created" if response.status == 201 else "patched (it appeared meanwhile)"
    return True


def table(found: list[Proposal]) -> str:
    """The proposal as aligned columns."""
    rows = [("TAG", "REPOSITORY", "DEAD LETTERS", "PLAN", "WHY")]
    rows += [(p.tag, p.repository or "-", str(len(p.ids)), p.plan, p.why) for p in found]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
                     for row in rows)


async def register(client: CortexClient, queue: OperatorQueue, found: list[Proposal], *,
                   out: Callable[[str], None]) -> tuple[int, int, int]:
    """Create what the plan says and replay the dead letters of every entity that now exists.

    Returns (entities created, dead letters replayed, proposals that failed).
    """
    created = failed = 0
    ready: list[str] = []
    for proposal in found:
        if proposal.plan == "create":
            if not await create(client, proposal):
                failed += 1
                out(f"{proposal.tag}: not created: {proposal.why}")
                continue
            created += 1
            out(f"{proposal.tag}: {proposal.why}")
        elif proposal.plan != "replay only":
            failed += 1
            continue
        ready.extend(proposal.ids)
    replayed = queue.replay(ids=ready) if ready else 0
    return created, replayed, failed


def cmd_register_entities(args: argparse.Namespace) -> int:
    """``cortex-bridge dlq register-entities``: propose; with ``--yes`` create and replay."""
    if args.dry_run and args.yes:
        raise CliError("dlq register-entities: give --dry-run or --yes, not both", 2)
    settings = settings_of(args)
    configure_command_logging(settings)

    async def run() -> int:
        with operator_queue(queue_settings_of(args)) as queue:
            found, untagged = proposals(queue, settings, limit=args.limit, provider=args.git_provider)
            if untagged:
                print(f"{untagged} {UNRESOLVED} dead letter(s) give no hint of a tag: left alone", file=sys.stderr)
            if not found:
                print(f"no {UNRESOLVED} dead letters to register entities for")
                return 0
            async with cortex_client(settings, queue) as client:
                for proposal in found:
                    await judge(client, proposal)
                print(table(found))
                waiting = sum(len(p.ids) for p in found if p.plan in ("create", "replay only"))
                new = sum(p.plan == "create" for p in found)
                if args.dry_run:
                    print(f"dry run: would create {new} entities and replay {waiting} dead letter(s); nothing changed")
                    return 0
                if not args.yes:
                    raise CliError(f"nothing created: give --yes to create {new} entities and replay {waiting}"
                                   " dead letter(s), or --dry-run to only propose", 2)
                created, replayed, failed = await register(client, queue, found, out=print)
        print(f"created {created} entities, replayed {replayed} dead letter(s)"
              + (f"; {failed} not registered (see above)" if failed else ""))
        return 1 if failed else 0

    try:
        return asyncio.run(run())
    except QueueError as exc:
        raise CliError(str(exc)) from None
