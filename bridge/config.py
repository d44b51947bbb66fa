"""Settings: a YAML file (``--config`` or ``BRIDGE_CONFIG``) overridden by ``BRIDGE_*`` variables.

Nested settings use ``__`` in variable names, e.g. ``BRIDGE_CORTEX__RATE_LIMIT_PER_MINUTE=600``.
Secrets are ``SecretStr`` so they never print; each can also come from a file (``*_file``),
which is how Kubernetes mounts them.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_file", default=None)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line, fit for an operator."""


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


class CortexSettings(_Section):
    url: str = Field("https://api.getcortexapp.com", description="Cortex API base URL.")
    token: SecretStr | None = Field(None, description="Cortex API token (a JWT).")
    token_file: Path | None = Field(None, description="File holding the Cortex API token; re-read on 401.")
    rate_limit_per_minute: int = Field(1000, ge=1, le=100_000, description="Requests per minute, all kinds.")
    burst: int = Field(50, ge=1, description="Token bucket capacity (requests that may leave back to back).")
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one Cortex request.")
    max_concurrency: int = Field(8, ge=1, le=256, description="Cortex requests in flight at once.")
    linger_ms: int = Field(50, ge=0, le=60_000, description="Wait this long for more records when idle.")
    verify_token_on_start: bool = Field(True, description="Check the token with GET /api/v1/catalog.")
    reconcile_ambiguous: bool = Field(
        True, description="Read back from Cortex before resending a request whose outcome is unknown."
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


class QueueSettings(_Section):
    path: Path = Field(Path("/var/lib/cortex-bridge/queue.db"), description="SQLite queue file.")
    max_records: int = Field(1_000_000, ge=1, description="Undelivered records kept before refusing input.")
    max_bytes: int = Field(1_073_741_824, ge=1024, description="Undelivered record bytes before refusing input.")
    delivered_history_seconds: float = Field(
        7 * 86_400.0, gt=0,
        description="How long delivered ids (for dedup and `trace`) are kept; expired in small batches every 5 minutes.",
    )
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with 503 when the queue is full.")


class HttpSettings(_Section):
    host: str = Field("0.0.0.0", description="Ingest listen address.")
    port: int = Field(8080, ge=0, le=65535, description="Ingest port (webhooks, /v1/records, probes).")
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="Largest accepted request body.")


class MetricsSettings(_Section):
    host: str = Field("0.0.0.0", description="Metrics listen address.")
    port: int = Field(9090, ge=0, le=65535, description="Prometheus /metrics port.")


class IngestSettings(_Section):
    token: SecretStr | None = Field(None, description="Bearer token required on POST /v1/records when set.")
    token_file: Path | None = Field(None, description="File holding the ingest token.")

    def token_value(self) -> str | None:
        return read_secret(self.token, self.token_file)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["json", "console"] = Field("json", description="JSON lines or human console output.")


class DrainSettings(_Section):
    deadline_seconds: float = Field(25.0, gt=0, description="On SIGTERM, exit within this many seconds.")


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
    sources: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Source adapters (webhooks, kafka, kubernetes); each has `name` and `type`.",
    )

    @model_validator(mode="after")
    def _unique_source_names(self) -> Settings:
        names = [str(s.get("name")) for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique: {', '.join(dupes)}")
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
        return (init_settings, env_settings, _YamlFileSource(settings_cls))


class _YamlFileSource(PydanticBaseSettingsSource):
    """The YAML config file, lowest priority."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE.get()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        return data


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{loc}: {err['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$BRIDGE_CONFIG``) and the environment.

    Raises :class:`ConfigError` with a one-line reason on any problem.
    """
    if path is None and os.environ.get("BRIDGE_CONFIG"):
        path = os.environ["BRIDGE_CONFIG"]
    token = _CONFIG_FILE.set(Path(path) if path is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        _CONFIG_FILE.reset(token)
