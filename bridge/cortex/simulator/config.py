"""How a simulated tenant is set up: its entities, metric definitions, tokens, limits and faults."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from bridge.cortex.simulator.store import SimEntity

#: The example tenant shipped with the package (also what ``cortex-bridge demo`` runs against).
EXAMPLE_CONFIG = Path(__file__).with_name("example.yaml")
#: The window of Cortex's "1000 requests per minute" (docs/cortex-api.md §8).
QUOTA_WINDOW_SECONDS = 60.0


class SimFaults(BaseModel):
    """Faults injected into ``/api/`` requests; replace ``SimulatorServer.config.faults`` to change them."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0, ge=0, description="Added to every /api/ response.")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction of /api/ requests answered 503.")
    seed: int = Field(default=0, description="Seed of the error_rate draws, so a run can be repeated.")
    drop_after_commit_every: int = Field(
        default=0,
        ge=0,
        description="Every Nth successful POST/PUT is stored, then its connection closed unanswered.",
    )
    retry_after_seconds: int | None = Field(
        default=None, ge=0, description="Retry-After of every 429 instead of computed."
    )
    commit_delay_ms: float = Field(
        default=0,
        ge=0,
        description="Every write is held this long, then stored and answered, even when the client "
        "has given up meanwhile (a slow backend behind a gateway that outlives the client's timeout).",
    )
    force_429_every: int = Field(
        default=0, ge=0, description="Every Nth /api/ request is answered 429 and not applied."
    )
    reject_bodies_containing: str | None = Field(
        default=None,
        description="A write whose body contains this text is answered 400 and not applied "
        "(Cortex rejecting a body for a reason the client could not foresee).",
    )


class SimulatorConfig(BaseModel):
    """The simulated tenant: who may call, which entities and metrics exist, limits and faults."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[str] = ["sim-token"]
    forbidden_tokens: list[str] = Field(default=[], description="Known tokens that get 403 on every call.")
    key_identifiers: dict[str, str] = Field(
        default={}, description="Token -> the API key identifier audit logs name it by (default: api-key-N, "
        "N its position in tokens).")
    audit_log_denied_tokens: list[str] = Field(
        default=[], description="Tokens without the 'View audit logs' permission (GET /api/v1/audit-logs: 403).")
    entities: list[SimEntity] = []
    metric_keys: list[str] = Field(
        default=[], description="Custom metric definitions (type PUBLIC_API) that exist."
    )
    rate_limit_per_minute: int = Field(
        default=1000, ge=0, description="Admitted requests per sliding 60 s; 0 = no limit."
    )
    rate_limit_window_seconds: float = Field(
        default=QUOTA_WINDOW_SECONDS, gt=0,
        description="Length of the sliding window (Cortex: 60 s; shorter only to test quotas quickly).",
    )
    faults: SimFaults = SimFaults()

    def key_identifier(self, token: str) -> str:
        """How the audit log names the API key ``token`` is."""
        known = self.tokens + [t for t in self.forbidden_tokens if t not in self.tokens]
        return self.key_identifiers.get(token) or f"api-key-{known.index(token) + 1 if token in known else 0}"

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimulatorConfig:
        """Load a config from YAML with the same keys as this model."""
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})

    def summary(self, url: str) -> str:
        """What someone pointing a bridge at this tenant at ``url`` needs to know (``cortex-bridge sim``)."""
        entities = ", ".join(e.tag for e in self.entities) or (
            "none: every write is answered 404 (give --entities FILE)")
        limit = f"{self.rate_limit_per_minute} requests/minute" if self.rate_limit_per_minute else "none"
        lines = [
            f"Cortex simulator on {url}",
            f"  token:       {', '.join(self.tokens) or 'none: every request is answered 401'}",
            f"  entities:    {entities}",
            f"  metric keys: {', '.join(self.metric_keys) or 'none'}",
            f"  rate limit:  {limit}",
            f"  inspect:     {url}/_sim/state (what Cortex stored), {url}/_sim/requests (every API request)",
            f"  bridge:      cortex.url: {url}, cortex.token: {self.tokens[0] if self.tokens else '(none)'}",
        ]
        active = {k: v for k, v in self.faults.model_dump().items() if v and k != "seed"}
        if active:
            lines.append(f"  faults:      {', '.join(f'{k}={v}' for k, v in active.items())}")
        return "\n".join(lines)
