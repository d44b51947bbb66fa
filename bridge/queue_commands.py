"""The operator commands on a queue: ``queue stats``, ``queue retry``, ``dlq``, ``trace``.

They work on the queue the configuration names (``queue.backend``: the SQLite file, or the
database PostgreSQL replicas share; ``--queue FILE`` names a SQLite file instead) through
:class:`~bridge.queue.operator.OperatorQueue`, on a connection of their own beside running
bridges, and share with :mod:`bridge.cli` the way a command fails (:class:`CliError`: one line,
never the DSN) and prints (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.config import ConfigError, QueueSettings, Settings, load_settings

if TYPE_CHECKING:
    from bridge.queue.operator import OperatorQueue


#: ``--queue`` of every operator command.
QUEUE_HELP = ("a SQLite queue file (default: the queue the configuration names, its file or, with"
              " queue.backend postgres, the shared database)")


class CliError(Exception):
    """A failure to report as one line with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def settings_of(args: argparse.Namespace) -> Settings:
    """The configuration ``--config`` names; a bad one is a usage error (exit 2)."""
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


def queue_settings_of(args: argparse.Namespace) -> QueueSettings:
    """The queue a command works on: ``--queue FILE``, else the configuration's."""
    if getattr(args, "queue", None):
        return QueueSettings(path=args.queue)
    return settings_of(args).queue


def print_json(value: Any) -> None:
    """Command output: indented, sorted JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _with_queue(args: argparse.Namespace, fn: Callable[[OperatorQueue], Any], *, write: bool = False) -> Any:
    from bridge.queue import QueueError
    from bridge.queue.open import open_operator

    settings = queue_settings_of(args)
    try:
        queue = open_operator(settings, write=write)
        try:
            return fn(queue)
        finally:
            queue.close()
    except QueueError as exc:
        raise CliError(str(exc)) from None


def cmd_queue_stats(args: argparse.Namespace) -> int:
    print_json(_with_queue(args, lambda q: q.stats()))
    return 0


def cmd_queue_retry(args: argparse.Namespace) -> int:
    if args.ids and args.parked:
        raise CliError("queue retry: give record ids or --parked, not both", 2)
    n = _with_queue(args, lambda q: q.retry(args.ids or None, parked=args.parked), write=True)
    which = "parked " if args.parked else ""
    print(f"released {n} {which}record(s) for delivery now")
    if args.ids and n < len(args.ids):
        print(f"{len(args.ids) - n} of the given ids are not waiting for a retry "
              "(delivered, dead, being sent, already due or unknown: see `cortex-bridge trace ID`)", file=sys.stderr)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.dlq_command == "list":
        print_json(_with_queue(args, lambda q: q.dlq_list(limit=args.limit, reason=args.reason)))
    elif args.dlq_command == "show":
        entry = _with_queue(args, lambda q: q.dlq_show(args.id))
        if entry is None:
            raise CliError(f"no dead letter with id {args.id}")
        print_json(entry)
    else:
        if not args.ids and not args.reason and not args.all:
            raise CliError(f"dlq {args.dlq_command}: give record ids, --reason, or --all", 2)
        replay = args.dlq_command == "replay"
        n = _with_queue(args, lambda q: (q.replay if replay else q.purge)(ids=args.ids or None, reason=args.reason),
                        write=True)
        verb = "replayed" if replay else "purged"
        print(f"{verb} {n} dead letter(s)")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    found = _with_queue(args, lambda q: q.trace(args.id))
    print_json(found)
    return 0 if not (len(found) == 1 and found[0].get("status") == "unknown") else 1
