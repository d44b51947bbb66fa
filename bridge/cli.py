"""``cortex-bridge`` command line: run, check-config, sim, demo, queue, dlq, trace, doctor, publish-docs.

Every error is one line on stderr and a non-zero exit: 2 for bad usage or configuration,
1 for a failure while doing the work. Never a traceback, not even when the reader of the output
goes away (``cortex-bridge queue stats | head``: exit 141, as for a process killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import __version__
from bridge.config import ConfigError, redact_url
from bridge.logs import configure_logging
from bridge.queue_commands import (
    QUEUE_HELP,
    CliError,
    cmd_dlq,
    cmd_queue_retry,
    cmd_queue_stats,
    cmd_trace,
    print_json,
    settings_of,
)

if TYPE_CHECKING:
    from bridge.cortex.client import CortexClient


# -- commands ---------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import run_until_signal
    from bridge.queue import QueueUnavailable
    from bridge.sources.base import SourceConfigError

    settings = settings_of(args)
    configure_logging(settings.log.level, settings.log.format)
    try:
        asyncio.run(run_until_signal(settings))
    except (SourceConfigError, ConfigError) as exc:
        raise CliError(str(exc), 2) from None
    except QueueUnavailable as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot start: {describe_os_error(exc)}") from None
    return 0


def describe_os_error(exc: OSError) -> str:
    """The reason and every path or address involved (``File exists`` alone names nothing)."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if exc.strerror and paths:
        return f"{exc.strerror}: {' -> '.join(paths)}"
    return str(exc) or type(exc).__name__


def cmd_sim(args: argparse.Namespace) -> int:
    from bridge.cortex.simulator import EXAMPLE_CONFIG, SimulatorConfig, SimulatorServer, serve

    # The example tenant unless told otherwise: an empty one answers every write 404.
    tenant = args.entities or EXAMPLE_CONFIG
    try:
        config = SimulatorConfig.from_yaml(tenant)
    except Exception as exc:
        raise CliError(f"cannot load simulator config {tenant}: {exc}", 2) from None
    if args.token:
        config.tokens = list(args.token)
    if args.rate_limit is not None:
        config.rate_limit_per_minute = args.rate_limit
    faults = {name: getattr(args, name) for name in _SIM_FAULTS if getattr(args, name) is not None}
    if faults:
        try:
            config.faults = config.faults.model_validate({**config.faults.model_dump(), **faults})
        except ValueError as exc:
            raise CliError(f"invalid simulator fault: {exc}".splitlines()[0], 2) from None

    def announce(server: SimulatorServer) -> None:
        print(server.config.summary(server.url), flush=True)

    try:
        asyncio.run(serve(config, args.host, args.port, announce))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


_SIM_FAULTS = {
    "latency_ms": (float, "added latency of every API answer"),
    "error_rate": (float, "fraction of API requests answered 503"),
    "drop_after_commit_every": (int, "every Nth write is stored, then its connection dropped unanswered"),
    "force_429_every": (int, "every Nth API request is answered 429"),
    "retry_after_seconds": (int, "Retry-After of the simulator's 429s"),
}


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import prepare_keep, run_demo

    keep = Path(args.keep) if args.keep else None
    try:
        if keep is not None:
            prepare_keep(keep)
        return asyncio.run(run_demo(serve=args.serve, records=args.records, keep=keep))
    except (OSError, ValueError) as exc:
        raise CliError(f"demo: {exc}", 2 if isinstance(exc, ValueError) else 1) from None


def cmd_preview(args: argparse.Namespace) -> int:
    from bridge.app import sources_on_throwaway_queue
    from bridge.operator_session import counted_client
    from bridge.sources.base import SourceConfigError
    from bridge.sources.webhooks.source import WebhookSource, describe, header_map

    settings = settings_of(args)
    config = next((s for s in settings.sources if s.get("name") == args.source), None)
    if config is None:
        raise CliError(f"no source named {args.source!r} in the configuration", 2)
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    headers: list[tuple[str, str]] = []
    for item in args.header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise CliError(f"--header {item!r}: expected NAME:VALUE", 2)
        headers.append((name.strip(), value.strip()))
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/json"))

    async def evaluate(catalog: CortexClient | None) -> dict[str, Any]:
        # A preview never stores anything real.
        async with sources_on_throwaway_queue(settings, [config], catalog=catalog) as (source,):
            if not isinstance(source, WebhookSource):
                raise CliError(f"source {args.source!r} is not a webhook source", 2)
            outcome = await source.evaluate(header_map(headers), body, authenticate=args.verify_signature)
            return describe(outcome)

    async def evaluate_with_catalog() -> dict[str, Any]:
        async with counted_client(settings) as client:
            return await evaluate(client)

    try:
        result = asyncio.run(evaluate_with_catalog() if args.lookup_catalog else evaluate(None))
    except SourceConfigError as exc:
        raise CliError(str(exc), 2) from None
    if result["outcome"] == "records" and args.lookup_catalog:
        result["catalog_lookup"] = f"asked Cortex at {redact_url(settings.cortex.url)}"
    elif result["outcome"] == "records":  # refused or ignored input never reached entity resolution
        result["catalog_lookup"] = ("skipped: add --lookup-catalog to look repositories up in the Cortex catalog"
                                    " (cortex.url with its token; the requests count against the quota), as the"
                                    " daemon does; without it an entity found only there shows as a dead letter")
    if not args.verify_signature:
        result["authentication"] = "not checked (use --verify-signature with the delivery's headers)"
    print_json(result)
    return 1 if result["outcome"] == "rejected" else 0


# -- parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage + exits 2; keep it to one line
        raise CliError(f"{self.prog}: {message} (see --help)", 2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cortex-bridge", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", "-c", help="YAML config file (default: $BRIDGE_CONFIG)")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run the bridge daemon")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("check-config", help="validate the configuration and print it (secrets hidden)")
    p.add_argument("--verify", action="store_true", help="also check the Cortex token against the API")
    p.set_defaults(fn=_lazy("bridge.check_config", "cmd_check_config"))

    p = sub.add_parser("sim", help="run the Cortex API simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--entities", help="YAML file with entities, metric_keys, tokens, faults "
                   "(default: the example tenant, bridge/cortex/simulator/example.yaml)")
    p.add_argument("--token", action="append", help="accepted bearer token (repeatable)")
    p.add_argument("--rate-limit", type=int, help="requests per minute (0 = unlimited)")
    for name, (kind, text) in _SIM_FAULTS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=f"fault: {text}")
    p.set_defaults(fn=cmd_sim)

    p = sub.add_parser("demo", help="run simulator + bridge + sample inputs and print what Cortex received")
    p.add_argument("--serve", action="store_true", help="keep running and print the URLs")
    p.add_argument("--records", type=int, default=400, help="how many generated metric points to add")
    p.add_argument("--keep", metavar="DIR", help="keep the demo's queue in DIR/queue.db, to inspect it afterwards")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("queue", help="inspect the durable queue")
    qsub = p.add_subparsers(dest="queue_command", required=True, parser_class=_Parser)
    q = qsub.add_parser("stats", help="depth, bytes, oldest age, dead letters")
    q.add_argument("--queue", help=QUEUE_HELP)
    q.set_defaults(fn=cmd_queue_stats)
    q = qsub.add_parser("retry", help="deliver waiting records now instead of at their next attempt")
    q.add_argument("--ids", nargs="+", metavar="ID", help="only these record ids")
    q.add_argument("--parked", action="store_true",
                   help="only records parked after a 404 (e.g. once the entity exists in Cortex)")
    q.add_argument("--queue", help=QUEUE_HELP)
    q.set_defaults(fn=cmd_queue_retry)

    p = sub.add_parser("dlq", help="inspect, replay or purge dead letters")
    dsub = p.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    d = dsub.add_parser("list", help="most recent dead letters")
    d.add_argument("--limit", type=int, default=50)
    d.add_argument("--reason")
    d.add_argument("--queue", help=QUEUE_HELP)
    d.set_defaults(fn=cmd_dlq)
    d = dsub.add_parser("show", help="one dead letter with its record")
    d.add_argument("id")
    d.add_argument("--queue", help=QUEUE_HELP)
    d.set_defaults(fn=cmd_dlq)
    for name, text in (("replay", "move dead letters back to the queue"), ("purge", "delete dead letters")):
        d = dsub.add_parser(name, help=text)
        d.add_argument("ids", nargs="*")
        d.add_argument("--reason", help="all dead letters with this reason")
        d.add_argument("--all", action="store_true", help="every dead letter")
        d.add_argument("--queue", help=QUEUE_HELP)
        d.set_defaults(fn=cmd_dlq)

    d = dsub.add_parser("register-entities", help="create the entities of unresolved dead letters, then replay them")
    d.add_argument("--reason", required=True, choices=["entity-unresolved"], help="which dead letters")
    d.add_argument("--dry-run", action="store_true", help="only propose (Cortex validates each entity)")
    d.add_argument("--yes", action="store_true", help="create the proposed entities and replay their dead letters")
    d.add_argument("--git-provider", choices=["github", "gitlab", "bitbucket", "azure"],
                   help="provider of the repositories (default: gitlab for gitlab sources, else github)")
    d.add_argument("--limit", type=int, default=1000, help="newest dead letters to consider")
    d.add_argument("--queue", help=QUEUE_HELP)
    d.set_defaults(fn=_lazy("bridge.register_entities", "cmd_register_entities"))

    p = sub.add_parser("doctor", help="why Cortex shows nothing: token, metric keys, entities, queue, audit log")
    p.add_argument("--since-minutes", type=float, default=60.0, help="audit-log window (default 60)")
    p.add_argument("--stuck-after", type=float, default=300.0,
                   help="seconds after which the oldest waiting record is a problem (default 300)")
    p.add_argument("--api-key-identifier", help="the bridge's API key as the audit log names it "
                   "(default: cortex.api_key_identifier)")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(fn=_lazy("bridge.doctor", "cmd_doctor"))

    p = sub.add_parser("preview", help="print the records a webhook payload would produce, storing nothing")
    p.add_argument("--source", required=True, help="name of a configured webhook source")
    p.add_argument("file", help="payload file ('-' for stdin)")
    p.add_argument("--header", "-H", action="append", help="request header NAME:VALUE (repeatable)")
    p.add_argument("--verify-signature", action="store_true", help="check credentials in the given headers")
    p.add_argument("--lookup-catalog", action="store_true",
                   help="resolve entities by git repository in the Cortex catalog, as the daemon does (asks Cortex)")
    p.set_defaults(fn=cmd_preview)

    p = sub.add_parser("publish-docs", help="hand an entity's OpenAPI spec to the bridge (for CI jobs)")
    p.add_argument("--entity", required=True, help="Cortex entity tag the spec documents")
    p.add_argument("file", help="OpenAPI 3.x document, JSON or YAML ('-' for stdin)")
    p.add_argument("--url", help="the bridge's base URL, e.g. http://cortex-bridge:8080 (default: $CORTEX_BRIDGE_URL)")
    p.add_argument("--token-file", help="file holding the ingest token (default: $CORTEX_BRIDGE_TOKEN_FILE, "
                   "else the token in $CORTEX_BRIDGE_TOKEN)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to keep retrying while the bridge cannot take the spec (default 120)")
    p.add_argument("--idempotency-key", help="delivery id for this publication (default: a new one per run)")
    p.set_defaults(fn=_lazy("bridge.publish_docs", "cmd_publish_docs"))

    p = sub.add_parser("trace", help="where a record or webhook delivery stands")
    p.add_argument("id", help="record id or delivery id")
    p.add_argument("--queue", help=QUEUE_HELP)
    p.set_defaults(fn=cmd_trace)
    return parser


def _lazy(module: str, name: str) -> Any:
    """A command function imported when it runs, so ``--help`` loads none of its layers."""
    def run(args: argparse.Namespace) -> int:
        fn: Any = getattr(importlib.import_module(module), name)
        return int(fn(args))
    return run


def version_text() -> str:
    """What ``cortex-bridge --version`` prints: the release, the queue file format, the Python."""
    from bridge.queue.schema import SCHEMA_VERSION

    return f"cortex-bridge {__version__} (queue schema {SCHEMA_VERSION}, Python {platform.python_version()})"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help or --version: printed, nothing to run
            code = exc.code if isinstance(exc.code, int) else 0
        else:
            code = args.fn(args)
        sys.stdout.flush()  # a reader gone away shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        # Nothing more can reach the reader; point stdout at /dev/null so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CliError as exc:
        print(f"cortex-bridge: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
