"""What a webhook source type is made of: its settings and its adapter.

An adapter is the system-specific part of a source type (how GitHub signs, which header holds
GitLab's delivery id, how an Argo CD payload maps to records). It lives here, beside the adapters
in :mod:`bridge.sources.webhooks`, rather than beside the pipeline: every adapter is a webhook
source type first (its settings name the secrets, its scheme reads HTTP headers), and the
transport-neutral pipeline (:mod:`bridge.sources.pipeline`) needs only the mapping half of it, which
it names as :class:`~bridge.sources.pipeline.PayloadMapper`. The Kafka formats ``cloudevents``
and ``mapping`` build the adapters of those types from a topic's ``options`` and run them in the
pipeline, without the HTTP half.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bridge.secrets import SecretSet
from bridge.sources.base import SourceContext
from bridge.sources.entity import EntityResolver, EntitySettings
from bridge.sources.lineage import Lineage, LineageSettings
from bridge.sources.lineage import MetricKey as MetricKey
from bridge.sources.payload import Headers, json_body, media_type
from bridge.sources.pipeline import Delivery, Draft, InputPipeline
from bridge.sources.screening import Screener
from bridge.sources.signatures import AuthScheme


class WebhookSettings(BaseModel):
    """Settings every webhook source has; each type extends them with its own.

    That credentials are configured is checked where deliveries arrive over HTTP
    (:class:`bridge.sources.webhooks.source.WebhookSource`): a Kafka topic mapped by the same
    adapter has its producer authenticated by Kafka.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Served at /webhooks/{name}.")
    type: str
    secrets: list[SecretStr] = Field(default_factory=list, description="Active secrets (several while rotating).")
    secret_files: list[Path] = Field(
        default_factory=list, description="Files with one secret per line, re-read on every delivery."
    )
    allow_unauthenticated: bool = Field(False, description="Accept deliveries without credentials.")
    entity: EntitySettings = Field(default_factory=EntitySettings)
    max_body_bytes: int | None = Field(None, ge=1, description="Lower than http.max_body_bytes for this source.")
    lineage: LineageSettings = Field(default_factory=LineageSettings)

    @property
    def secret_set(self) -> SecretSet:
        """The configured secrets, inline and in files."""
        return SecretSet(tuple(self.secrets), tuple(self.secret_files))

    def credentials_problem(self) -> str | None:
        """Why deliveries over HTTP could not be authenticated, or ``None`` (they can, or are
        accepted without it on purpose)."""
        if not (self.secrets or self.secret_files or self.allow_unauthenticated):
            return "set `secrets` or `secret_files` (or `allow_unauthenticated: true`)"
        return None


S = TypeVar("S", bound=WebhookSettings)


class WebhookAdapter(ABC, Generic[S]):
    """The system-specific part of a webhook source: how it authenticates, decodes and maps."""

    #: media types accepted (after authentication); ``+json`` suffixes are always accepted
    content_types: frozenset[str] = frozenset({"application/json"})

    def __init__(self, settings: S) -> None:
        self.settings = settings

    @abstractmethod
    def scheme(self) -> AuthScheme | None:
        """How deliveries are authenticated (``None``: by nothing the bridge can check)."""

    def authenticate(self, headers: Headers, body: bytes, secrets: list[bytes]) -> str | None:
        """``None`` if the delivery carries valid credentials, else why not (for the 401)."""
        scheme = self.scheme()
        return scheme.verify(headers, body, secrets) if scheme is not None else None

    def check_header(self, headers: Headers, secrets: list[bytes]) -> tuple[str | None, bool]:
        """Before the body is read: (why the credentials are refused or ``None``, whether they are
        fully checked). A token is checked completely; an HMAC only for presence and form."""
        scheme = self.scheme()
        if scheme is None:
            return None, False
        return scheme.check_header(headers, secrets), not scheme.needs_body

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        """The sender's id of this delivery (the same on a redelivery), if it has one."""
        return None

    def accepts(self, headers: Headers) -> str | None:
        """``None`` if the content type is one this adapter reads, else why not."""
        return _unaccepted(self.content_types, headers.get("Content-Type", ""))

    def decode(self, headers: Headers, body: bytes) -> Any:
        """The payload of a body; raise ``ValueError`` (or ``UnusablePayload``) if it is malformed."""
        return json_body(body)

    def screener(self, headers: Headers) -> Screener | None:
        """A test saying why a body sent with ``headers`` maps to nothing, when that is certain
        without decoding it; ``None``: this adapter screens nothing."""
        return None

    @abstractmethod
    async def map(self, delivery: Delivery) -> list[Draft]:
        """Drafts for the payload; raise ``MapsToNothing`` or ``UnusablePayload`` instead of returning []."""

    def pipeline(self, ctx: SourceContext) -> InputPipeline:
        """The input pipeline around this adapter: its entity settings, its size limit."""
        http_limit = ctx.settings.http.max_body_bytes
        return InputPipeline(self, source=self.settings.name,
                             resolver=EntityResolver(self.settings.entity, ctx.lookup_repository),
                             max_bytes=min(http_limit, self.settings.max_body_bytes or http_limit),
                             lineage=Lineage(ctx.queue, self.settings.lineage))


@lru_cache(maxsize=256)  # bounded: the header is the sender's text; a few values recur on every input
def _unaccepted(content_types: frozenset[str], header: str) -> str | None:
    ctype = media_type({"Content-Type": header})
    if ctype in content_types or ctype.endswith("+json"):
        return None
    return f"content type {ctype or '(none)'} is not accepted ({', '.join(sorted(content_types))})"
