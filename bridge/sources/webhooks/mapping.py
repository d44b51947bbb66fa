"""Declarative mapping for any other JSON webhook (``type: mapping``): configuration, no code.

Expressions are JMESPath (see :mod:`bridge.sources.expressions`) evaluated against
``{"headers": {lowercase name: value}, "body": <payload>}``. A source has:

* ``auth``: ``hmac`` (header, algorithm, prefix, ``part`` for ``k=v,k=v`` headers such as
  CircleCI's ``v1=``, ``timestamp_part`` for Buildkite's ``timestamp=`` signing) or ``token``;
* ``delivery_id``: expression for the sender's delivery id (dedup of redeliveries);
* ``subject``: ``keys`` (expressions; static-map keys, first non-empty first) and ``repository``
  (expression; a git URL or ``org/repo``) for entity resolution;
* ``rules``: each with ``when`` (matches when truthy), ``kind``, ``id`` (expressions whose values
  identify the input: the record id is derived from them), ``fields`` (record field ->
  expression) and ``constants`` (record field -> literal, used when the field's expression yields
  nothing). Every matching rule yields one record; none matching -> ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridge.records import RECORD_ADAPTER, RecordKind, record_id
from bridge.sources.base import SourceContext, parse_settings
from bridge.sources.entity import Subject
from bridge.sources.expressions import check_expression, search
from bridge.sources.gitrefs import repository_from_url
from bridge.sources.payload import Headers, text
from bridge.sources.pipeline import TIMED_KINDS, Delivery, Draft, MapsToNothing
from bridge.sources.screening import Condition, Screener, condition_of, plain_json
from bridge.sources.signatures import AuthScheme, HmacScheme, TokenScheme
from bridge.sources.timestamps import parse_ci_timestamp
from bridge.sources.webhooks.adapter import WebhookAdapter, WebhookSettings
from bridge.sources.webhooks.source import WebhookSource

#: What a rule may set, per kind (id, entity and provenance are the pipeline's).
_FIELDS: dict[str, frozenset[str]] = {
    "deploy": frozenset({"title", "timestamp", "type", "sha", "environment", "url", "deployer", "custom_data"}),
    "event": frozenset({"type", "title", "timestamp", "description", "url", "custom_data"}),
    "metric": frozenset({"key", "timestamp", "value"}),
    "custom_data": frozenset({"key", "value", "description"}),
    "dependency": frozenset({"callee", "method", "path", "description", "metadata"}),
    "docs": frozenset({"spec"}),
}


class MappingAuth(BaseModel):
    """Exactly one of ``hmac`` and ``token``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hmac: HmacScheme | None = None
    token: TokenScheme | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> MappingAuth:
        if (self.hmac is None) == (self.token is None):
            raise ValueError("set exactly one of `hmac` and `token`")
        return self


class SubjectSettings(BaseModel):
    """How the payload names its entity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[str] = Field(default_factory=list, description="Expressions for static-map keys.")
    repository: str | None = Field(None, description="Expression for the git repository (URL or org/repo).")

    @field_validator("keys")
    @classmethod
    def _keys_valid(cls, value: list[str]) -> list[str]:
        return [check_expression(e) for e in value]

    @field_validator("repository")
    @classmethod
    def _repository_valid(cls, value: str | None) -> str | None:
        return None if value is None else check_expression(value)


class Rule(BaseModel):
    """One record to build when ``when`` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    when: str = Field(description="Expression; the rule applies when it is truthy.")
    kind: RecordKind
    id: list[str] = Field(min_length=1, description="Expressions identifying the input.")
    fields: dict[str, str] = Field(default_factory=dict)
    constants: dict[str, Any] = Field(default_factory=dict)

    @field_validator("when")
    @classmethod
    def _when_valid(cls, value: str) -> str:
        return check_expression(value)

    @field_validator("id")
    @classmethod
    def _id_valid(cls, value: list[str]) -> list[str]:
        return [check_expression(e) for e in value]

    @model_validator(mode="after")
    def _fields_valid(self) -> Rule:
        allowed = _FIELDS[self.kind]
        for name in (*self.fields, *self.constants):
            if name not in allowed:
                raise ValueError(f"rule {self.name!r}: {self.kind} has no field {name!r} ({', '.join(sorted(allowed))})")
        for expression in self.fields.values():
            check_expression(expression)
        return self


class MappingSettings(WebhookSettings):
    """``type: mapping``."""

    type: Literal["mapping"]
    auth: MappingAuth | None = Field(None, description="Required unless allow_unauthenticated.")
    delivery_id: str | None = None
    subject: SubjectSettings = Field(default_factory=SubjectSettings)
    rules: list[Rule] = Field(min_length=1)

    @field_validator("delivery_id")
    @classmethod
    def _delivery_valid(cls, value: str | None) -> str | None:
        return None if value is None else check_expression(value)

    def credentials_problem(self) -> str | None:
        """Secrets are not enough: ``auth`` says how they are used."""
        problem = super().credentials_problem()
        if problem is None and self.auth is None and not self.allow_unauthenticated:
            return "auth: set `auth.hmac` or `auth.token` (or `allow_unauthenticated: true`)"
        return problem


#: Why a payload no rule matches is ignored.
NO_RULE_MATCHED = "no-rule-matched: no rule matches this payload"


def truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null and empty strings, lists and objects are false; 0 is true."""
    return value is not None and value is not False and value != "" and value != [] and value != {}


class MappingAdapter(WebhookAdapter[MappingSettings]):
    """Evaluates the configured rules."""

    def __init__(self, settings: MappingSettings) -> None:
        super().__init__(settings)
        conditions = [condition_of(rule.when) for rule in settings.rules]
        #: every rule's necessary condition, or None when some rule has none (then nothing is screened)
        self._conditions: list[Condition] | None = (
            None if any(c is None for c in conditions) else [c for c in conditions if c is not None])

    def screener(self, headers: Headers) -> Screener | None:
        """"No rule matches", decided from the raw body when every rule's condition fails on it;
        ``None`` when some rule has no condition (then every body takes the full path)."""
        conditions = self._conditions
        if conditions is None:
            return None

        def screen(body: bytes) -> str | None:
            for condition in conditions:
                if condition(headers, body):
                    return None
            # decoding decides for a malformed body: it is refused, not ignored
            return NO_RULE_MATCHED if plain_json(body) else None

        return screen

    def scheme(self) -> AuthScheme | None:
        auth = self.settings.auth
        return auth.hmac or auth.token if auth is not None else None

    def delivery_id(self, headers: Headers, payload: Any) -> str | None:
        if self.settings.delivery_id is None:
            return None
        return text(search(self.settings.delivery_id, _document(headers, payload)))

    async def map(self, delivery: Delivery) -> list[Draft]:
        document = _document(delivery.headers, delivery.payload)
        subject = self._subject(document)
        drafts: list[Draft] = []
        skipped: list[str] = []
        for rule in self.settings.rules:
            if not truthy(search(rule.when, document)):
                continue
            draft, problem = self._apply(rule, document, subject)
            if draft is not None:
                drafts.append(draft)
            else:
                skipped.append(f"rule {rule.name!r}: {problem}")
        if not drafts:
            raise MapsToNothing("; ".join(skipped) if skipped else NO_RULE_MATCHED)
        return drafts

    def _apply(self, rule: Rule, document: dict[str, Any], subject: Subject) -> tuple[Draft | None, str]:
        parts = [search(e, document) for e in rule.id]
        if any(p is None or p == "" for p in parts):
            return None, "an id expression yields nothing"
        fields: dict[str, Any] = dict(rule.constants)
        for name, expression in rule.fields.items():
            value = search(expression, document)
            if isinstance(value, dict):
                # A multiselect hash ({name: a.b, email: a.c}) keeps only what the payload has.
                value = {k: v for k, v in value.items() if v is not None} or None
            if value is not None:
                fields[name] = value
        if "timestamp" in fields:
            try:
                fields["timestamp"] = parse_ci_timestamp(fields["timestamp"])
            except (ValueError, OverflowError, OSError):
                return None, f"timestamp {fields['timestamp']!r} is not a timestamp"
        problem = _invalid(rule.kind, fields)
        if problem:
            return None, problem
        rid = record_id("mapping", self.settings.name, rule.name, *parts)
        return Draft(rule.kind, rid, fields, subject), ""

    def _subject(self, document: dict[str, Any]) -> Subject:
        keys = tuple(k for k in (text(search(e, document)) for e in self.settings.subject.keys) if k)
        repository = None
        if self.settings.subject.repository is not None:
            repository = repository_from_url(text(search(self.settings.subject.repository, document)))
        return Subject(keys=keys, document=document, repository=repository)


def _document(headers: Headers, payload: Any) -> dict[str, Any]:
    return {"headers": {k.lower(): v for k, v in headers.items()}, "body": payload}


def _invalid(kind: str, fields: dict[str, Any]) -> str | None:
    # Validate with placeholders for what the pipeline adds, so a rule that yields no title (an
    # elided or unexpected payload) is skipped with a reason instead of failing the delivery.
    probe: dict[str, Any] = {"timestamp": "1970-01-01T00:00:00Z"} if kind in TIMED_KINDS else {}
    probe.update(fields)
    try:
        RECORD_ADAPTER.validate_python({**probe, "kind": kind, "id": "probe", "entity": "probe",
                                        "provenance": {"source": "probe"}})
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                         for e in exc.errors(include_url=False))
    return None


def adapter(config: dict[str, Any], ctx: SourceContext) -> MappingAdapter:
    """The adapter of ``config``; also what Kafka's ``mapping`` format runs."""
    return MappingAdapter(parse_settings(MappingSettings, config))


def create(config: dict[str, Any], ctx: SourceContext) -> WebhookSource:
    """Source factory registered as ``mapping``."""
    return WebhookSource(adapter(config, ctx), ctx)
