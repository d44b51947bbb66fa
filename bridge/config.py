"""Settings: a YAML file (``--config`` or ``BRIDGE_CONFIG``) overridden by ``BRIDGE_*`` variables.

Nested settings use ``__`` in variable names, e.g. ``BRIDGE_CORTEX__RATE_LIMIT_PER_MINUTE=600``.
Secrets are ``SecretStr`` so they never print; each can also come from a file (``*_file``),
which is how Kubernetes mounts them.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bridge.config_file import CONFIG_FILE, YamlFileSource, describe_errors
from bridge.config_file import ConfigError as ConfigError  # raised by every module that reads settings
from bridge.secrets import SecretSet


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given inline or as a file path (file wins; re-read each call for rotation)."""
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {file}: {exc.strerror}") from exc
    return value.get_secret_value() if value is not None else None


#: ``scheme://userinfo@``: credentials inside a URL
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``***@``.

    How a URL (``cortex.url`` may carry credentials) is shown or logged, anywhere.
    """
    return _USERINFO.sub(r"\1***@", text)


RecordKindName = Literal["deploy", "event", "metric", "custom_data", "dependency", "docs"]


def _default_priority_weights() -> dict[RecordKindName, int]:
    return {"deploy": 16, "event": 16, "metric": 1, "custom_data": 1, "dependency": 1, "docs": 1}


class CortexSettings(_Section):
    url: str = Field("https://api.getcortexapp.com", description="Cortex API base URL.")
    token: SecretStr | None = Field(None, description="Cortex API token (a JWT).")
    token_file: Path | None = Field(None, description="File holding the Cortex API token; re-read on 401.")
    rate_limit_per_minute: int = Field(1000, ge=1, le=100_000, description="Requests per minute, all kinds.")
    burst: int = Field(50, ge=1, description="Token bucket capacity (requests that may leave back to back).")
    rate_limit_window_seconds: float = Field(
        60.0, gt=0, le=60,
        description="The sliding window rate_limit_per_minute counts in. Cortex counts 60 s: shorten it only "
        "against a simulator started with the same rate_limit_window_seconds (to test the quota quickly).",
    )
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one Cortex request.")
    max_concurrency: int = Field(8, ge=1, le=256, description="Cortex requests in flight at once.")
    linger_ms: int = Field(50, ge=0, le=60_000, description="Wait this long for more records when idle.")
    priority_weights: dict[RecordKindName, Annotated[int, Field(ge=1)]] = Field(
        default_factory=_default_priority_weights,
        description="Share of requests each record kind gets while several have records waiting: deploys"
        " and events jump a backlog of the bulk kinds (metric points, custom data, dependencies, docs), which"
        " keep a guaranteed share (here 4 of 36 requests). A kind left out weighs 1.",
    )
    verify_token_on_start: bool = Field(True, description="Check the token with GET /api/v1/catalog.")
    reconcile_ambiguous: bool = Field(
        True, description="Read back from Cortex before resending a request whose outcome is unknown."
    )
    reconcile_settle_seconds: float = Field(
        120.0,
        gt=0,
        description="Wait this long after a request's outcome became unknown before reading Cortex back: "
        "longer than any request can live at Cortex after the client gave up (must exceed "
        "request_timeout_seconds).",
    )
    circuit_failure_threshold: int = Field(
        5, ge=1, le=1000,
        description="Consecutive connection failures, timeouts or 5xx answers that open the circuit breaker: "
        "then nothing is sent to Cortex but one probe request per interval.",
    )
    circuit_open_seconds: float = Field(
        1.0, gt=0, description="First interval the circuit breaker stays open before a probe (doubles after each "
        "failed probe; each interval is drawn from 50-100 % of that for jitter).",
    )
    circuit_max_open_seconds: float = Field(
        30.0, gt=0, description="Longest interval the circuit breaker stays open between probes.",
    )
    api_key_identifier: str | None = Field(
        None, max_length=255,
        description="How Cortex's audit log names the bridge's API key (its actor identifier): `cortex-bridge"
        " doctor` then checks that Cortex recorded the bridge's recent writes under it. Not a secret.",
    )

    @field_validator("url")
    @classmethod
    def _url_usable(cls, value: str) -> str:
        # The message never repeats the value: it may hold a password.
        try:
            parts = urllib.parse.urlsplit(value.strip().strip("'\""))
            has_credentials = parts.username is not None or parts.password is not None
            host = parts.hostname
            parts.port  # noqa: B018 (raises for a port that is not a number)
        except ValueError:
            raise ValueError("not a URL (expected e.g. https://api.getcortexapp.com)") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://api.getcortexapp.com")
        if has_credentials:
            raise ValueError("must not contain user:password@: Cortex authenticates with cortex.token or "
                             "cortex.token_file")
        return value

    @model_validator(mode="after")
    def _settle_after_timeout(self) -> CortexSettings:
        if self.reconcile_settle_seconds <= self.request_timeout_seconds:
            raise ValueError(
                "reconcile_settle_seconds must be greater than request_timeout_seconds: a read-back "
                "taken while the original request may still be in flight proves nothing"
            )
        return self

    def token_value(self) -> str | None:
        return read_secret(self.token, self.token_file)


class RetrySettings(_Section):
    initial_backoff_seconds: float = Field(1.0, gt=0, description="First retry delay after a 5xx/network error.")
    max_backoff_seconds: float = Field(300.0, gt=0, description="Cap of the exponential backoff.")
    max_age_seconds: float = Field(
        86_400.0, gt=0, description="A record still failing after this long goes to the dead-letter set."
    )
    not_found_retry_seconds: float = Field(
        600.0, gt=0, description="Retry interval for records whose entity or metric key is not found (404)."
    )
    auth_recheck_seconds: float = Field(30.0, gt=0, description="How often to re-check a rejected token.")


class PostgresSettings(_Section):
    dsn: SecretStr | None = Field(
        None, description="libpq connection string or URL (a secret: never logged). One of dsn, dsn_file."
    )
    dsn_file: Path | None = Field(None, description="File holding the DSN (e.g. a mounted Kubernetes Secret).")
    pool_size: int = Field(10, ge=2, le=200, description="Connections each replica keeps to PostgreSQL.")
    statement_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest a statement may run before PostgreSQL cancels it (the input is refused 503)."
    )

    def resolved_dsn(self) -> str:
        """The DSN, read from ``dsn_file`` if set; raises ``OSError`` or ``ValueError``."""
        if self.dsn_file is not None:
            text = self.dsn_file.read_text().strip()
            if not text:
                raise ValueError(f"{self.dsn_file} is empty")
            return text
        if self.dsn is None or not self.dsn.get_secret_value():
            raise ValueError("queue.postgres.dsn or queue.postgres.dsn_file is required with queue.backend: postgres")
        return self.dsn.get_secret_value()


class QueueSettings(_Section):
    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="sqlite: one replica, a file on its volume; postgres: any number of replicas"
        " sharing one database."
    )
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    path: Path = Field(Path("/var/lib/cortex-bridge/queue.db"), description="SQLite queue file.")
    max_records: int = Field(1_000_000, ge=1, description="Undelivered records kept before refusing input.")
    max_bytes: int = Field(1_073_741_824, ge=1024, description="Undelivered record bytes before refusing input.")
    delivered_history_seconds: float = Field(
        7 * 86_400.0, gt=0,
        description="How long delivered ids (for dedup and `trace`) are kept; expired in small batches every 5 minutes.",
    )
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with 503 when the queue is full.")

    @model_validator(mode="after")
    def _postgres_needs_a_dsn(self) -> QueueSettings:
        pg = self.postgres
        if self.backend == "postgres" and pg.dsn is None and pg.dsn_file is None:
            raise ValueError("queue.backend postgres needs queue.postgres.dsn or queue.postgres.dsn_file")
        if pg.dsn is not None and pg.dsn_file is not None:
            raise ValueError("set one of queue.postgres.dsn and queue.postgres.dsn_file, not both")
        return self


class HttpSettings(_Section):
    host: str = Field("0.0.0.0", description="Ingest listen address.")
    port: int = Field(8080, ge=0, le=65535, description="Ingest port (webhooks, /v1/records, probes).")
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    header_timeout_seconds: float = Field(
        10.0, gt=0,
        description="A connection must send a complete request head (request line and headers) within this"
        " many seconds of opening, or of the first byte of its next request; else it is closed (408).",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request body must arrive completely within this many seconds (else 408)."
    )
    unauthenticated_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024,
        description="Body bytes all requests together may hold in memory before they are authenticated"
        " (HMAC-signed webhooks, unauthenticated inputs); past it requests are answered 503 + Retry-After.",
    )


class MetricsSettings(_Section):
    host: str = Field("0.0.0.0", description="Metrics listen address.")
    port: int = Field(9090, ge=0, le=65535, description="Prometheus /metrics port.")


class IngestSettings(_Section):
    token: SecretStr | None = Field(None, description="Bearer token POST /v1/records requires.")
    token_file: Path | None = Field(
        None, description="File with the ingest token(s), one per line, re-read on every request (rotation)."
    )
    allow_unauthenticated: bool = Field(
        False, description="Accept POST /v1/records without a token (one of token, token_file or this is required)."
    )

    def credentials_problem(self) -> str | None:
        """Why these settings are not allowed (no credentials, or both kinds), else ``None``."""
        has_token = bool(self.token is not None and self.token.get_secret_value()) or self.token_file is not None
        if not (has_token or self.allow_unauthenticated):
            return ("POST /v1/records needs credentials: set ingest.token or ingest.token_file"
                    " (or ingest.allow_unauthenticated: true to accept anyone who can reach the port)")
        if has_token and self.allow_unauthenticated:
            return "set either ingest.token/ingest.token_file or ingest.allow_unauthenticated, not both"
        return None

    @property
    def secret_set(self) -> SecretSet:
        """The active ingest tokens, as webhook sources keep theirs (files re-read on each request)."""
        inline = (self.token,) if self.token is not None and self.token.get_secret_value() else ()
        files = (self.token_file,) if self.token_file is not None else ()
        return SecretSet(inline, files)

    def token_value(self) -> str | None:
        return read_secret(self.token, self.token_file)


DeployMode = Literal["create", "enrich-only", "off"]


class DeploySettings(_Section):
    """Coalescing: one Cortex deploy per (entity, environment, change), whoever reports it (docs/deploy-identity.md)."""

    coalesce: bool = Field(True, description="Reports of one deploy identity within the window become one Cortex deploy:"
                           " the first is POSTed, later ones update it by uuid (PUT).")
    window_seconds: float = Field(1800.0, gt=0, description="Most seconds between reports (deploy timestamps) of one deploy.")
    timestamp: Literal["first-report", "rollout-complete"] = Field("first-report", description="The deploy's time:"
                                                                   " the earliest report's, or the latest's (rollout done).")
    sources: dict[str, DeployMode] = Field(default_factory=dict, description="By source name (or `deploys:` on a source):"
                                           " create (default), enrich-only (only enriches another source's deploy), off.")
    change_failure_window_seconds: float | None = Field(
        3600.0, ge=0, description="An incident opening, a failed rollout or a ROLLBACK this many seconds after a deploy"
        " of its entity (and environment) is a change failure of that deploy: one `change_failure_event_type` event"
        " naming the deploy's uuid and sha, and `customData.changeFailure` on the deploy. 0 or null: off."
        " Needs `coalesce` (docs/deploy-identity.md).")
    change_failure_event_type: str = Field("change-failure", min_length=1,
                                           description="Custom event type of a change failure.")
    change_failure_signals: list[str] = Field(
        default_factory=lambda: ["ROLLOUT_FAILED", "SYNC_FAILED", "HEALTH_DEGRADED", "RECONCILIATION_FAILED"],
        description="Custom event types that are a failed rollout (besides every incident opening and every"
        " ROLLBACK deploy): Kubernetes', Argo CD's and Flux's failure events by default.")


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["json", "console"] = Field("json", description="JSON lines or human console output.")


class DrainSettings(_Section):
    deadline_seconds: float = Field(25.0, gt=0, description="On SIGTERM, exit within this many seconds.")


class DependencySettings(_Section):
    reconcile_after_seconds: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Per source name (`native` for POST /v1/records): remove a dependency the bridge created from"
        " that source once the source has not reported it for this many seconds (Delete dependencies in bulk)."
        " Edges the bridge did not create, or created from a source not named here, are never deleted."
        " Empty: nothing is ever deleted.",
    )
    reconcile_interval_seconds: float = Field(
        300.0, gt=0, description="How often edges past their reconcile_after_seconds are looked for.")


class Settings(BaseSettings):
    """All settings of the bridge."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    cortex: CortexSettings = Field(default_factory=CortexSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    drain: DrainSettings = Field(default_factory=DrainSettings)
    dependencies: DependencySettings = Field(default_factory=DependencySettings)
    deploys: DeploySettings = Field(default_factory=DeploySettings)
    sources: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Source adapters (webhooks, kafka, kubernetes); each has `name` and `type`.",
    )

    @model_validator(mode="after")
    def _ingest_credentials(self) -> Settings:
        # Here rather than on IngestSettings: a missing `ingest` section is the usual case, and
        # the other sections' problems are reported first.
        problem = self.ingest.credentials_problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _source_deploy_modes(self) -> Settings:  # a source's `deploys:` is the queue's business, not its type's
        modes = {str(s.get("name")): s.pop("deploys") for s in self.sources if "deploys" in s}
        self.deploys.sources.update(DeploySettings.model_validate({"sources": modes}).sources)
        return self

    @model_validator(mode="after")
    def _unique_source_names(self) -> Settings:
        names = [str(s.get("name")) for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _reconciled_sources_exist(self) -> Settings:
        known = {str(s.get("name")) for s in self.sources} | {"native"}
        unknown = sorted(set(self.dependencies.reconcile_after_seconds) - known)
        if unknown:
            raise ValueError(f"dependencies.reconcile_after_seconds: no source named {', '.join(unknown)}"
                             f" (sources: {', '.join(sorted(known))})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlFileSource(settings_cls))


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$BRIDGE_CONFIG``) and the environment.

    Raises :class:`ConfigError` with a one-line reason on any problem.
    """
    if path is None and os.environ.get("BRIDGE_CONFIG"):
        path = os.environ["BRIDGE_CONFIG"]
    token = CONFIG_FILE.set(Path(path) if path is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("invalid configuration: " + "; ".join(describe_errors(exc, Settings))) from None
    finally:
        CONFIG_FILE.reset(token)
