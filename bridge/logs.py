"""structlog setup: JSON lines with bound context, and no secrets.

Every event passes through :func:`redact`, which masks values under secret-looking keys,
bearer tokens and the ``user:password@`` of URLs inside strings, so a careless ``log.info(..., headers=...)`` cannot leak a token.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from bridge.config import redact_url

_SECRET_KEYS = re.compile(r"(token|secret|password|authorization|signature|api[_-]?key|sasl)", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
MASK = "***"


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(_BEARER.sub(r"\1" + MASK, value))
    if isinstance(value, dict):
        return {k: MASK if _SECRET_KEYS.search(str(k)) else _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets anywhere in the event."""
    for key in list(event):
        event[key] = MASK if _SECRET_KEYS.search(key) and key != "event" else _mask(event[key])
    return event


#: Whether debug lines are written (set by :func:`configure_logging`).
_debug = False


def debug_enabled() -> bool:
    """Whether debug lines are written: a hot path asks before it builds one. A module's logger is
    a lazy proxy, and even a filtered-out call first binds a new logger (~7 µs per accepted request)."""
    return _debug


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog and the stdlib logging of libraries once per process.

    Every line goes to stderr (stdout is the output of the CLI's commands: JSON a script reads).
    Library log records (aiohttp, aiokafka, ...) pass through the same processors and renderer as
    the bridge's own lines, so with ``log.format: json`` every line is one JSON object, redacted
    the same way.
    """
    global _debug
    numeric = getattr(logging, level.upper(), logging.INFO)
    _debug = numeric <= logging.DEBUG
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact, renderer],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries are chatty at info (aiokafka logs every rebalance step): warnings and up only.
    root.setLevel(max(numeric, logging.WARNING))
