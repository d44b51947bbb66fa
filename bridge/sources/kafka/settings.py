"""Settings of a ``type: kafka`` source: topics and formats, connection, group and commit timing.

Validated when the source is built, so a bad source fails at startup;
:meth:`KafkaSourceSettings.consumer_kwargs` turns them into :class:`aiokafka.AIOKafkaConsumer`
arguments.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from bridge.config import ConfigError, read_secret
from bridge.sources.kafka.formats import FormatName


class KafkaTopic(BaseModel):
    """One subscribed topic and its payload format."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Topic name.")
    format: FormatName | None = Field(None, description="Payload format; the source's `format` when unset.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the format's mapping.")


class KafkaSourceSettings(BaseModel):
    """Settings of one ``type: kafka`` source."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["kafka"] = "kafka"
    bootstrap_servers: list[str] = Field(min_length=1, description="host:port of brokers (or a comma list).")
    client_id: str = Field("cortex-bridge", description="Client id the brokers see.")
    group_id: str = Field("cortex-bridge", min_length=1, description="Consumer group.")
    topics: list[KafkaTopic] = Field(default_factory=list, description="Topics (names or {name, format, options}).")
    topic_pattern: str | None = Field(None, description="Regex of topics to subscribe to instead of `topics`.")
    format: FormatName = Field("native", description="Format of topics that name none, and of pattern topics.")
    options: dict[str, Any] = Field(default_factory=dict, description="Format options for pattern topics.")
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a partition with no committed offset starts."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(None, description="File holding the SASL password (wins).")
    ssl_ca_file: Path | None = Field(None, description="CA bundle to verify brokers (system CAs when unset).")
    ssl_cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_key_file: Path | None = Field(None, description="Key of the client certificate.")
    ssl_check_hostname: bool = True
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed", description="read_committed skips messages of aborted transactions."
    )
    session_timeout_ms: int = Field(10_000, ge=500, description="Group session timeout.")
    heartbeat_interval_ms: int = Field(3_000, ge=50, description="Group heartbeat interval.")
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    max_poll_records: int = Field(500, ge=1, le=100_000, description="Messages per fetch batch at most.")
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1024)
    metadata_max_age_ms: int = Field(
        300_000, ge=100, description="Refresh topic metadata this often (new topics, pattern matches)."
    )
    max_batches_in_flight: int = Field(4, ge=1, le=64, description="Batches being made durable at once.")
    commit_interval_seconds: float = Field(5.0, gt=0, description="Commit durable offsets this often.")
    commit_timeout_seconds: float = Field(10.0, gt=0, description="Give up one commit attempt after this.")
    poll_timeout_ms: int = Field(500, ge=10, le=10_000, description="Longest wait of one fetch.")
    connect_backoff_max_seconds: float = Field(30.0, gt=0, description="Cap of reconnect backoff at start.")
    shutdown_timeout_seconds: float = Field(
        10.0, gt=0, description="Stop: wait this long for in-flight batches, the last commit and leaving."
    )

    @field_validator("topic_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("topics", mode="before")
    @classmethod
    def _topic_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSourceSettings:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("set exactly one of `topics` and `topic_pattern`")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if self.security_protocol.startswith("SASL_") and (
            not self.sasl_username or (self.sasl_password is None and self.sasl_password_file is None)
        ):
            raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password (or _file)")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        return self

    def format_of(self, topic: str) -> tuple[FormatName, dict[str, Any]]:
        """The format and options configured for ``topic``."""
        for item in self.topics:
            if item.name == topic:
                return item.format or self.format, item.options or self.options
        return self.format, self.options

    def consumer_kwargs(self) -> dict[str, Any]:
        """Connection and group settings for :class:`aiokafka.AIOKafkaConsumer`."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            # Out of range always restarts at the earliest offset (never skip what exists). With
            # start_from=latest, new partitions need another reset than that: "none" makes the
            # consumer raise, and the source seeks itself.
            "auto_offset_reset": "earliest" if self.start_from == "earliest" else "none",
            "isolation_level": self.isolation_level,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "max_poll_records": self.max_poll_records,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "metadata_max_age_ms": self.metadata_max_age_ms,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = read_secret(self.sasl_password, self.sasl_password_file)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context verifying brokers against ``ssl_ca_file`` (or the system CAs)."""
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None,
                certfile=str(self.ssl_cert_file) if self.ssl_cert_file else None,
                keyfile=str(self.ssl_key_file) if self.ssl_key_file else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"source {self.name!r}: cannot load TLS files: {exc}") from exc
        context.check_hostname = self.ssl_check_hostname
        return context
