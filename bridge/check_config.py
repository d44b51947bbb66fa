"""``cortex-bridge check-config [--verify]``: validate the configuration as the daemon would.

Without ``--verify`` nothing leaves the machine: settings, sources and the files they read are
checked, and the effective configuration is printed with every secret replaced by ``(set)``.
With ``--verify`` the PostgreSQL queue's connection and schema are checked and Cortex is asked
whether the token is accepted: one request, counted in the queue's spend log when a bridge ran
on it (bridge/operator_session.py), so a check beside running bridges stays inside their quota.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bridge.config import ConfigError, Settings, redact_url
from bridge.queue_commands import CliError, print_json, settings_of


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the effective configuration (secrets redacted); with ``--verify``, reach out too."""
    from bridge.app import check_secret_files, sources_on_throwaway_queue
    from bridge.sources.base import SourceConfigError

    settings = settings_of(args)

    async def check_sources() -> None:
        # Building the sources validates their settings fully; then the files the daemon reads
        # at start must be there, as they are checked at start.
        async with sources_on_throwaway_queue(settings, settings.sources) as sources:
            check_secret_files(settings, sources)

    try:
        asyncio.run(check_sources())
    except (SourceConfigError, ConfigError) as exc:
        raise CliError(str(exc), 2) from None
    token = settings.cortex.token_value()
    summary = settings.model_dump(mode="json")
    summary["cortex"]["url"] = redact_url(settings.cortex.url)
    summary["cortex"]["token"] = "(set)" if token else "(not set)"
    summary["ingest"]["token"] = "(set)" if settings.ingest.token_value() else "(not set)"
    summary["sources"] = [{"name": s.get("name"), "type": s.get("type")} for s in settings.sources]
    print_json(summary)
    if not token:
        print("warning: no Cortex token configured (cortex.token or cortex.token_file)", file=sys.stderr)
    if args.verify:
        if settings.queue.backend == "postgres":
            verify_queue_database(settings)
        return verify_token(settings)
    print("configuration OK", file=sys.stderr)
    return 0


def verify_queue_database(settings: Settings) -> None:
    """The PostgreSQL queue answers and its schema is one this version can run on."""
    from bridge.queue import QueueError
    from bridge.queue.postgres.schema import verify_database

    pg = settings.queue.postgres
    try:
        dsn = pg.resolved_dsn()
    except OSError as exc:
        raise CliError(f"cannot read queue.postgres.dsn_file {pg.dsn_file}: {exc.strerror or exc}", 2) from None
    except ValueError as exc:
        raise CliError(str(exc), 2) from None  # says what is missing, never a value
    try:
        found = asyncio.run(verify_database(dsn, timeout_seconds=pg.statement_timeout_seconds))
    except QueueError as exc:
        raise CliError(f"queue database: {exc}") from None
    print(found, file=sys.stderr)


def verify_token(settings: Settings) -> int:
    """Cortex accepts the configured token (one request under the shared budget)."""
    from bridge.cortex.client import NotSent
    from bridge.operator_session import counted_client

    async def verify() -> int:
        async with counted_client(settings) as client:
            try:
                resp = await client.verify_token()
            except Exception as exc:
                kind = "unreachable" if isinstance(exc, NotSent) else "no answer"
                raise CliError(f"Cortex at {redact_url(settings.cortex.url)} {kind}: {redact_url(str(exc))}") from None
        if resp.status == 401:
            raise CliError("Cortex rejected the token (401): the API key was not accepted")
        if not resp.ok:
            raise CliError(f"Cortex token check failed ({resp.status}): {resp.message()}")
        print("Cortex accepted the token", file=sys.stderr)
        return 0

    return asyncio.run(verify())
