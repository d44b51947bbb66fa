"""What a Cortex answer (or a failure to get one) means for the records a request carried.

One classifier, as Vector's ``RetryLogic`` is for its sinks: the sender's bulk path and its
one-by-one isolation both ask :func:`classify_response` / :func:`classify_failure` and act on
the :class:`Outcome`. The rules (docs/cortex-api.md):

=========================  ================  ==================================================
answer                     outcome           what the sender does
=========================  ================  ==================================================
2xx                        ``DELIVERED``     delivered; custom-data entities reported
                                             ``NOT_FOUND`` in the 200's ``errors`` are not found
429                        ``RATE_LIMITED``  back at once, no attempt used (the client paused
                                             the budget for ``Retry-After``)
401, 403                   ``AUTH``          back at once, no attempt used; sending pauses
404                        ``NOT_FOUND``     the entity or key may be created later: long retry
other 4xx but 408, 409     ``REJECT``        a bulk is isolated record by record; a single
                                             record is dead-lettered
408, 409, 5xx, the rest    ``RETRY``         exponential backoff
not sent (connect error)   ``RETRY``         exponential backoff
no answer (timeout, drop)  ``AMBIGUOUS``     read back before any resend, unless resending
                                             is harmless (``RETRY``)
=========================  ================  ==================================================

Resending is harmless for a bulk custom-data PUT (it overwrites), so the bulk path passes
``resend_is_harmless`` for custom data. Isolation has always treated an unanswered single
request as ambiguous whatever its kind (an isolated custom-data item is then resent after the
settle time by reconciliation, which never reads idempotent kinds back); that difference is
kept, so it passes ``False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bridge.cortex.client import Ambiguous, CortexResponse, NotSent
from bridge.cortex.endpoints import created_uuid, entities_not_found
from bridge.records import RecordKind


class Outcome(Enum):
    """How the records of one request leave the request."""

    DELIVERED = "delivered"
    RETRY = "retry"
    NOT_FOUND = "not_found"
    REJECT = "reject"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class Verdict:
    """An :class:`Outcome` with what the queue and the logs are told about it."""

    outcome: Outcome
    #: what the queue records as the record's last error (empty when delivered)
    error: str = ""
    status: int | None = None
    #: Cortex's own explanation of a non-2xx answer
    message: str = ""
    #: DELIVERED: entities Cortex did not find, whose records were not stored
    missing: frozenset[str] = frozenset()
    #: DELIVERED: the uuid Cortex gave the created deploy or event
    cortex_uuid: str | None = None


#: 4xx answers that say nothing against the request itself: retried, not rejected.
RETRIED_CLIENT_ERRORS = frozenset({408, 409})


def classify_response(resp: CortexResponse, kind: RecordKind | None = None) -> Verdict:
    """The verdict on an answer to a request for records of ``kind`` (None: not a write)."""
    status = resp.status
    if resp.ok:
        missing = entities_not_found(resp.body) if kind == "custom_data" else frozenset()
        return Verdict(Outcome.DELIVERED, status=status, missing=missing, cortex_uuid=created_uuid(resp.body))
    message = resp.message()
    if status == 429:
        return Verdict(Outcome.RATE_LIMITED, "rate limited (429)", status, message)
    if status in (401, 403):
        return Verdict(Outcome.AUTH, f"Cortex rejected the token ({status})", status, message)
    if status == 404:
        return Verdict(Outcome.NOT_FOUND, message, status, message)
    if 400 <= status < 500 and status not in RETRIED_CLIENT_ERRORS:
        return Verdict(Outcome.REJECT, f"Cortex {status}: {message}", status, message)
    return Verdict(Outcome.RETRY, f"Cortex {status}: {message}", status, message)


def classify_failure(exc: NotSent | Ambiguous, *, resend_is_harmless: bool) -> Verdict:
    """The verdict when no answer came: never sent (retry) or maybe stored (ambiguous)."""
    if isinstance(exc, Ambiguous) and not resend_is_harmless:
        return Verdict(Outcome.AMBIGUOUS, str(exc))
    return Verdict(Outcome.RETRY, str(exc))


@dataclass
class AuthState:
    """Cortex rejected the token (401/403): sending stops until a re-check succeeds."""

    failed: bool = False
    status: int = 0
    message: str = ""
