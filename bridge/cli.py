"""``cortex-bridge`` command line: run, check-config, sim, demo, queue, dlq, trace.

Every error is one line on stderr and a non-zero exit: 2 for bad usage or configuration,
1 for a failure while doing the work. Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bridge.config import ConfigError, Settings, load_settings, redact_url
from bridge.logs import configure_logging


class CliError(Exception):
    """A failure to report as one line with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


def _queue_path(args: argparse.Namespace) -> Path:
    if getattr(args, "queue", None):
        return Path(args.queue)
    return _settings(args).queue.path


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


# -- commands ---------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import run_until_signal
    from bridge.queue import QueueUnavailable
    from bridge.sources.base import SourceConfigError

    settings = _settings(args)
    configure_logging(settings.log.level, settings.log.format)
    try:
        asyncio.run(run_until_signal(settings))
    except (SourceConfigError, ConfigError) as exc:
        raise CliError(str(exc), 2) from None
    except QueueUnavailable as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot start: {exc.strerror or exc}") from None
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.app import sources_on_throwaway_queue
    from bridge.config import ConfigError as _ConfigError
    from bridge.sources.base import SourceConfigError

    settings = _settings(args)
    try:
        token = settings.cortex.token_value()
        settings.ingest.token_value()
    except _ConfigError as exc:
        raise CliError(str(exc), 2) from None

    async def check_sources() -> None:
        # Building the sources validates their settings fully.
        async with sources_on_throwaway_queue(settings, settings.sources):
            pass

    try:
        asyncio.run(check_sources())
    except SourceConfigError as exc:
        raise CliError(str(exc), 2) from None
    summary = settings.model_dump(mode="json")
    summary["cortex"]["url"] = redact_url(settings.cortex.url)
    summary["cortex"]["token"] = "(set)" if token else "(not set)"
    summary["ingest"]["token"] = "(set)" if settings.ingest.token_value() else "(not set)"
    summary["sources"] = [{"name": s.get("name"), "type": s.get("type")} for s in settings.sources]
    _print_json(summary)
    if not token:
        print("warning: no Cortex token configured (cortex.token or cortex.token_file)", file=sys.stderr)
    if args.verify:
        if settings.queue.backend == "postgres":
            _verify_queue_database(settings)
        return _verify_token(settings)
    print("configuration OK", file=sys.stderr)
    return 0


def _verify_queue_database(settings: Settings) -> None:
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


def _verify_token(settings: Settings) -> int:
    from bridge.cortex.budget import budget_from_settings
    from bridge.cortex.client import NotSent, client_from_settings

    async def verify() -> int:
        # The app's builder, without the spend log: that lives in the queue database, and opening
        # it runs crash recovery, which must not happen under a running bridge. So this one
        # request is not counted in a running bridge's window.
        bucket = budget_from_settings(settings.cortex)
        async with client_from_settings(settings.cortex, bucket, timeout_seconds=10) as client:
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


def cmd_sim(args: argparse.Namespace) -> int:
    from bridge.cortex.simulator import SimulatorConfig, serve

    try:
        config = SimulatorConfig.from_yaml(args.entities) if args.entities else SimulatorConfig()
    except Exception as exc:
        raise CliError(f"cannot load simulator config {args.entities}: {exc}", 2) from None
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
    print(f"Cortex simulator on http://{args.host}:{args.port} (state: /_sim/state)", file=sys.stderr)
    try:
        asyncio.run(serve(config, args.host, args.port))
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
    from bridge.demo import run_demo

    return asyncio.run(run_demo(serve=args.serve, records=args.records))


def _with_queue(args: argparse.Namespace, fn: Callable[[Any], Any], *, write: bool = False) -> Any:
    from bridge.queue import QueueError, files

    try:
        return files.with_file(_queue_path(args), fn, write=write)
    except QueueError as exc:
        raise CliError(str(exc)) from None


def cmd_queue_stats(args: argparse.Namespace) -> int:
    from bridge.queue import inspect

    _print_json(_with_queue(args, inspect.stats))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from bridge.queue import dead_letters, inspect

    if args.dlq_command == "list":
        _print_json(_with_queue(args, lambda c: inspect.dlq_list(c, limit=args.limit, reason=args.reason)))
    elif args.dlq_command == "show":
        entry = _with_queue(args, lambda c: inspect.dlq_show(c, args.id))
        if entry is None:
            raise CliError(f"no dead letter with id {args.id}")
        _print_json(entry)
    else:
        if not args.ids and not args.reason and not args.all:
            raise CliError(f"dlq {args.dlq_command}: give record ids, --reason, or --all", 2)
        fn = dead_letters.replay if args.dlq_command == "replay" else dead_letters.purge
        n = _with_queue(args, lambda c: fn(c, ids=args.ids or None, reason=args.reason), write=True)
        verb = "replayed" if args.dlq_command == "replay" else "purged"
        print(f"{verb} {n} dead letter(s)")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from bridge.queue import inspect

    found = _with_queue(args, lambda c: inspect.trace(c, args.id))
    _print_json(found)
    return 0 if not (len(found) == 1 and found[0].get("status") == "unknown") else 1


def cmd_preview(args: argparse.Namespace) -> int:
    from bridge.app import sources_on_throwaway_queue
    from bridge.sources.base import SourceConfigError
    from bridge.sources.webhooks.source import WebhookSource, describe, header_map

    settings = _settings(args)
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

    async def evaluate() -> dict[str, Any]:
        # A preview never stores anything real.
        async with sources_on_throwaway_queue(settings, [config]) as (source,):
            if not isinstance(source, WebhookSource):
                raise CliError(f"source {args.source!r} is not a webhook source", 2)
            outcome = await source.evaluate(header_map(headers), body, authenticate=args.verify_signature)
            return describe(outcome)

    try:
        result = asyncio.run(evaluate())
    except SourceConfigError as exc:
        raise CliError(str(exc), 2) from None
    if not args.verify_signature:
        result["authentication"] = "not checked (use --verify-signature with the delivery's headers)"
    _print_json(result)
    return 1 if result["outcome"] == "rejected" else 0


# -- parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage + exits 2; keep it to one line
        raise CliError(f"{self.prog}: {message} (see --help)", 2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cortex-bridge", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", "-c", help="YAML config file (default: $BRIDGE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run the bridge daemon")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("check-config", help="validate the configuration and print it (secrets hidden)")
    p.add_argument("--verify", action="store_true", help="also check the Cortex token against the API")
    p.set_defaults(fn=cmd_check_config)

    p = sub.add_parser("sim", help="run the Cortex API simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--entities", help="YAML file with entities, metric_keys, tokens, faults")
    p.add_argument("--token", action="append", help="accepted bearer token (repeatable)")
    p.add_argument("--rate-limit", type=int, help="requests per minute (0 = unlimited)")
    for name, (kind, text) in _SIM_FAULTS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=f"fault: {text}")
    p.set_defaults(fn=cmd_sim)

    p = sub.add_parser("demo", help="run simulator + bridge + sample inputs and print what Cortex received")
    p.add_argument("--serve", action="store_true", help="keep running and print the URLs")
    p.add_argument("--records", type=int, default=400, help="how many generated metric points to add")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("queue", help="inspect the durable queue")
    qsub = p.add_subparsers(dest="queue_command", required=True, parser_class=_Parser)
    q = qsub.add_parser("stats", help="depth, bytes, oldest age, dead letters")
    q.add_argument("--queue", help="queue file (default: from the configuration)")
    q.set_defaults(fn=cmd_queue_stats)

    p = sub.add_parser("dlq", help="inspect, replay or purge dead letters")
    dsub = p.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    d = dsub.add_parser("list", help="most recent dead letters")
    d.add_argument("--limit", type=int, default=50)
    d.add_argument("--reason")
    d.add_argument("--queue")
    d.set_defaults(fn=cmd_dlq)
    d = dsub.add_parser("show", help="one dead letter with its record")
    d.add_argument("id")
    d.add_argument("--queue")
    d.set_defaults(fn=cmd_dlq)
    for name, text in (("replay", "move dead letters back to the queue"), ("purge", "delete dead letters")):
        d = dsub.add_parser(name, help=text)
        d.add_argument("ids", nargs="*")
        d.add_argument("--reason", help="all dead letters with this reason")
        d.add_argument("--all", action="store_true", help="every dead letter")
        d.add_argument("--queue")
        d.set_defaults(fn=cmd_dlq)

    p = sub.add_parser("preview", help="print the records a webhook payload would produce, storing nothing")
    p.add_argument("--source", required=True, help="name of a configured webhook source")
    p.add_argument("file", help="payload file ('-' for stdin)")
    p.add_argument("--header", "-H", action="append", help="request header NAME:VALUE (repeatable)")
    p.add_argument("--verify-signature", action="store_true", help="check credentials in the given headers")
    p.set_defaults(fn=cmd_preview)

    p = sub.add_parser("trace", help="where a record or webhook delivery stands")
    p.add_argument("id", help="record id or delivery id")
    p.add_argument("--queue")
    p.set_defaults(fn=cmd_trace)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code: int = args.fn(args)
        return code
    except CliError as exc:
        print(f"cortex-bridge: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
