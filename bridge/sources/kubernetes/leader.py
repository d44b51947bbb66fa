"""Leader election on a coordination.k8s.io/v1 Lease: only the holder watches and emits.

The algorithm is client-go's ``leaderelection`` package:

* every ``retry_period`` each candidate reads the Lease. A free Lease (none, an empty
  ``holderIdentity``, or one whose holder has not renewed for ``leaseDurationSeconds``) is taken
  with an optimistic-concurrency ``PUT`` (the ``resourceVersion`` it read), so of two candidates
  only one wins;
* expiry is judged by the candidate's own monotonic clock since it last saw the record change,
  never by comparing ``renewTime`` with its wall clock, so clock skew between pods is harmless;
* the holder renews every ``retry_period``; when it cannot renew for ``renew_deadline`` (shorter
  than the lease duration) it stops leading before anyone else may take over;
* on a graceful stop the holder releases the Lease (empty holder, duration 1 s), so the next
  candidate takes over at its next retry instead of waiting out the lease.

What the kubernetes_asyncio ``leaderelection`` module lacks and this adds: the release, and a
hand-over watermark. Each renewal writes the annotation ``cortex-bridge.io/processed`` with the
resourceVersion up to which the holder has handled each watched collection, and which bridge
database (instance id) that memory lives in. A new leader with another database lists each
collection as it was at that resourceVersion and takes it as its baseline, so what the previous
leader already emitted is not emitted again (see docs/kubernetes.md, "Leader election").
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge import metrics
from bridge.sources.kubernetes.watch import JsonObject, call_raw, meta

log = structlog.get_logger("bridge.kubernetes")

#: Annotation on the Lease: ``{"by": instance id, "rv": {stream key: resourceVersion}}``.
WATERMARK_ANNOTATION = "cortex-bridge.io/processed"
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")



class LeaderElectionSettings(BaseModel):
    """``leader_election:`` of a kubernetes source."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Elect one leader among replicas; off: this bridge always watches.")
    lease_name: str | None = Field(None, description="Lease name; default cortex-bridge-<source name>.")
    lease_namespace: str | None = Field(
        None, description="Lease namespace; default $POD_NAMESPACE, else the service account's namespace."
    )
    identity: str | None = Field(None, description="Holder identity; default <hostname>-<process>-<instance id>"
                                 " (unique per process: replicas on one PostgreSQL database share the instance id).")
    lease_duration_seconds: int = Field(15, ge=1, description="A holder silent this long loses the Lease.")
    renew_deadline_seconds: float = Field(10.0, gt=0, description="Stop leading after failing to renew this long.")
    retry_period_seconds: float = Field(2.0, gt=0, description="How often to try to acquire or renew.")

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionSettings:
        if not self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError("need retry_period_seconds < renew_deadline_seconds < lease_duration_seconds")
        return self


def default_namespace() -> str:
    """The pod's namespace ($POD_NAMESPACE or the mounted service account's), else ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _micro_time() -> str:
    """``metav1.MicroTime`` as the apiserver writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Handover:
    """What the previous leader, whose memory is in another database, had handled."""

    holder: str
    positions: dict[str, str]


def _watermark(lease: JsonObject) -> tuple[str, dict[str, str]]:
    raw = (meta(lease).get("annotations") or {}).get(WATERMARK_ANNOTATION)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return "", {}
    if not isinstance(data, dict) or not isinstance(data.get("rv"), dict):
        return "", {}
    return str(data.get("by") or ""), {str(k): str(v) for k, v in data["rv"].items() if v}


Verdict = Literal["leading", "following", "error"]


class LeaseElector:
    """Campaigns for one Lease; calls back when this bridge starts and stops leading."""

    def __init__(
        self,
        api_client: ApiClient,
        settings: LeaderElectionSettings,
        *,
        source: str,
        instance: str,
        positions: Callable[[], dict[str, str] | None],
    ) -> None:
        self.settings = settings
        self.source = source
        self.instance = instance
        # Unique per process, not per database: replicas sharing one PostgreSQL queue share the
        # instance id, and two holders with one identity would both believe they lead.
        host = os.environ.get("HOSTNAME") or os.uname().nodename
        self.identity = settings.identity or f"{host}-{uuid.uuid4().hex[:6]}-{instance[:8]}"
        self.name = settings.lease_name or f"cortex-bridge-{source}"
        self.namespace = settings.lease_namespace or default_namespace()
        self.leading = False
        self._api = CoordinationV1Api(api_client)
        self._positions = positions
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._stopping = False
        self._wake = asyncio.Event()
        deadline = settings.renew_deadline_seconds
        self._timeouts = (min(5.0, deadline), deadline)
        metrics.K8S_LEADER.labels(source).set(0)

    async def run(
        self,
        start_leading: Callable[[Handover | None], None],
        stop_leading: Callable[[], Awaitable[None]],
    ) -> None:
        """Campaign until :meth:`stop`; ``start_leading``/``stop_leading`` bracket each term."""
        while not self._stopping:
            verdict, handover = await self._attempt()
            if self._stopping:
                break
            if verdict == "leading":
                self._last_renew = time.monotonic()
                if not self.leading:
                    self._set_leading(True)
                    log.info("k8s_leader_started", source=self.source, identity=self.identity,
                             lease=f"{self.namespace}/{self.name}",
                             handover_from=handover.holder if handover else None)
                    start_leading(handover)
            elif self.leading and (
                verdict == "following"
                or time.monotonic() - self._last_renew > self.settings.renew_deadline_seconds
            ):
                # Someone else holds it, or renewing failed too long: others may take over soon.
                self._set_leading(False)
                log.warning("k8s_leader_lost", source=self.source, identity=self.identity, verdict=verdict)
                await stop_leading()
            self._wake.clear()
            delay = self.settings.retry_period_seconds * random.uniform(0.9, 1.1)
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def stop(self) -> None:
        """End the campaign loop (the caller stops leading, then calls :meth:`release`)."""
        self._stopping = True
        self._wake.set()

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        metrics.K8S_LEADER.labels(self.source).set(1 if leading else 0)
        metrics.K8S_LEADER_TRANSITIONS.labels(self.source, "leader" if leading else "follower").inc()

    async def _attempt(self) -> tuple[Verdict, Handover | None]:
        try:
            # A call that hangs must not keep a leader leading past its renew deadline, while the
            # others already see the lease expire.
            async with asyncio.timeout(self.settings.renew_deadline_seconds):
                return await self._try_acquire_or_renew()
        except ApiException as exc:
            metrics.K8S_API_ERRORS.labels(self.source, str(exc.status or 0)).inc()
            if exc.status != 409:  # a lost update race is routine; anything else is worth a line
                log.warning("k8s_lease_failed", source=self.source, status=exc.status, reason=exc.reason)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            metrics.K8S_API_ERRORS.labels(self.source, "0").inc()
            log.warning("k8s_lease_failed", source=self.source, error=repr(exc))
        return "error", None

    async def _read(self) -> JsonObject | None:
        try:
            return await call_raw(self._api.read_namespaced_lease, self.name, self.namespace,
                                  _request_timeout=self._timeouts)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _publish(self, lease: JsonObject) -> None:
        """Put this leader's watermark on ``lease``, once it has one.

        Until the source has listed every collection in this term (``positions()`` is None) the
        previous watermark stays as it is, naming the database it describes: a leader that dies
        during its own hand-over leaves the previous leader's watermark for the next one.
        """
        positions = self._positions()
        if positions is None:
            return
        annotations = lease.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[WATERMARK_ANNOTATION] = json.dumps(
            {"by": self.instance, "rv": positions}, sort_keys=True, separators=(",", ":")
        )

    async def _try_acquire_or_renew(self) -> tuple[Verdict, Handover | None]:
        lease = await self._read()
        now = _micro_time()
        if lease is None:
            body: JsonObject = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": self.settings.lease_duration_seconds,
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
            }
            self._publish(body)
            await call_raw(self._api.create_namespaced_lease, self.namespace, body, _request_timeout=self._timeouts)
            return "leading", None
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        by, previous = _watermark(lease)
        handover = Handover(by, previous) if by and by != self.instance and not self.leading else None
        if holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration_seconds)
            if holder and time.monotonic() < self._observed_at + duration:
                return "following", None
            spec = dict(spec, acquireTime=now, leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1)
        spec.update(holderIdentity=self.identity, renewTime=now,
                    leaseDurationSeconds=self.settings.lease_duration_seconds)
        lease["spec"] = spec
        if holder == self.identity:
            self._publish(lease)
        await call_raw(self._api.replace_namespaced_lease, self.name, self.namespace, lease,
                       _request_timeout=self._timeouts)
        return "leading", handover

    async def release(self) -> None:
        """Give the Lease up with a final watermark, so another replica takes over at once."""
        try:
            lease = await self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = dict(lease.get("spec") or {}, holderIdentity="", leaseDurationSeconds=1,
                                 renewTime=_micro_time())
            self._publish(lease)
            await call_raw(self._api.replace_namespaced_lease, self.name, self.namespace, lease,
                           _request_timeout=self._timeouts)
            log.info("k8s_leader_released", source=self.source, identity=self.identity)
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # Not fatal: the others take over once the lease expires.
            log.warning("k8s_lease_release_failed", source=self.source, error=repr(exc))
        finally:
            if self.leading:
                self._set_leading(False)
