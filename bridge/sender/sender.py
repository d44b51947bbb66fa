"""The batching sender: durable queue -> Cortex, under the shared request budget.

Workers take a permit from the bucket *first*, then claim whatever is ready: under backlog a
claim fills a whole bulk request (100 metric points of one entity × key, custom data up to
~2 MB), and when idle a short linger lets a burst coalesce. Each answer is classified once
(:mod:`bridge.sender.outcomes`) and its outcome applied per record (:meth:`Sender._apply`);
nothing leaves the queue except as delivered or dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import structlog

from bridge import metrics
from bridge.config import CortexSettings, DependencySettings, DeploySettings, RetrySettings
from bridge.cortex.budget import Permit
from bridge.cortex.client import Ambiguous, CortexClient, CortexResponse, NotSent
from bridge.cortex.endpoints import CUSTOM_DATA_MAX_BYTES, DEPENDENCIES_PER_REQUEST, METRIC_POINTS_PER_REQUEST
from bridge.queue import BatchPolicy, QueueBackend, QueuedRecord
from bridge.sender.coalesce import Coalescer
from bridge.sender.dispositions import Dispositions
from bridge.sender.docs_order import DOCS_CLAIM_BYTES, DOCS_PER_CLAIM, DocsOrder
from bridge.sender.edges import EdgeLedger
from bridge.sender.outcomes import AuthState, Outcome, Verdict, classify_failure, classify_response
from bridge.sender.reconcile import reconcile_ambiguous
from bridge.sender.requests import BatchRequest, build_request
from bridge.tasks import cancel_and_wait

log = structlog.get_logger("bridge.sender")

#: Kinds whose write overwrites (a PUT): resending one whose answer was lost is harmless.
IDEMPOTENT_KINDS = frozenset({"custom_data", "dependency", "docs"})

#: How often a replica that is not the sender looks again whether it became the sender.
NOT_SENDER_RECHECK_SECONDS = 1.0

POLICY = BatchPolicy(
    max_items={"deploy": 1, "event": 1, "metric": METRIC_POINTS_PER_REQUEST, "custom_data": 5000,
               "dependency": DEPENDENCIES_PER_REQUEST, "docs": DOCS_PER_CLAIM},
    max_bytes={"custom_data": CUSTOM_DATA_MAX_BYTES - 100_000, "dependency": CUSTOM_DATA_MAX_BYTES - 100_000,
               "docs": DOCS_CLAIM_BYTES},
    ambiguous_kinds=frozenset({"deploy", "event", "metric"}),
    hold_ambiguous_lanes=frozenset({"metric"}),
)


class Sender:
    """Delivers queued records to Cortex; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, queue: QueueBackend, client: CortexClient, cortex: CortexSettings, retry: RetrySettings,
                 deploys: DeploySettings | None = None, *, dependencies: DependencySettings | None = None) -> None:
        self.queue = queue
        #: deploy reports (and an incident's events) coalesced into one Cortex item (bridge/sender/coalesce.py)
        self.coalescer = Coalescer(queue, deploys)
        self.client = client
        self.cortex = cortex
        self.retry = retry
        self.dispositions = Dispositions(queue, retry)
        self.docs = DocsOrder(queue)
        self.edges = EdgeLedger.when_configured(queue, client, dependencies)
        self.policy = replace(POLICY, kind_weights={str(kind): weight for kind, weight in cortex.priority_weights.items()})
        self.auth = AuthState()
        self._auth_ok = asyncio.Event()
        self._auth_ok.set()
        self._generation = 0
        self._work = asyncio.Condition()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._ambiguous_pending = asyncio.Event()
        self._ambiguous_pending.set()  # recovery: a crash may have left ambiguous records
        self._unrecorded: list[list[QueuedRecord]] = []
        self._wakers: set[asyncio.Task[None]] = set()
        queue.on_ready(self.notify)
        # A replica that takes the sending over inherits its predecessor's in-flight requests as ambiguous:
        # the read-back loop must look again, not wait for an ambiguity of its own.
        queue.on_sender_takeover(self._ambiguous_pending.set)

    # -- lifecycle ---------------------------------------------------------------------------

    def notify(self) -> None:
        """New records are ready (called by the queue after each commit)."""
        self._generation += 1

        async def wake() -> None:
            async with self._work:
                self._work.notify_all()

        if self._tasks:
            task = asyncio.get_running_loop().create_task(wake())
            self._wakers.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._wakers.discard)

    async def start(self) -> None:
        self._stopping = False
        for i in range(self.cortex.max_concurrency):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"sender-{i}"))
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))
        self._tasks.append(asyncio.create_task(self._auth_loop(), name="auth-recheck"))
        self._tasks.append(asyncio.create_task(self._unrecorded_loop(), name="unrecorded-outcomes"))
        if self.edges is not None:
            self._tasks.append(asyncio.create_task(self.edges.run(lambda: self._stopping, self.queue.may_send),
                                                   name="dependency-reconcile"))

    async def stop(self, deadline: float = 10.0) -> None:
        """Stop claiming; let in-flight requests finish within ``deadline`` seconds.

        A request still unanswered at the deadline is cancelled: its records stay SENDING in the
        database and are read back as ambiguous at the next start, never resent blindly.
        """
        self._stopping = True
        self.notify()
        end = time.monotonic() + deadline
        while self._in_flight and time.monotonic() < end:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()  # all at once; then each is waited for
        for task in self._tasks:
            try:
                await cancel_and_wait(task)
            except Exception as exc:  # a loop that died must not keep the queue from closing
                log.error("sender_task_failed", task=task.get_name(), error=repr(exc))
        self._tasks.clear()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- worker ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        idle = True
        while not self._stopping:
            try:
                idle = await self._work_once(idle)
            except Exception as exc:  # e.g. the disk is full: claim cannot write; never lose the worker
                log.error("sender_worker_error", error=repr(exc))
                await asyncio.sleep(1.0)

    async def _work_once(self, idle: bool) -> bool:
        """Claim and send one batch; returns whether the queue had nothing ready."""
        await self._auth_ok.wait()
        # Cortex down: wait here, before a permit or a claim, as for the token. In half-open this
        # reserves the one probe for this worker; each way out that sends nothing releases it.
        circuit = self.client.circuit
        await circuit.wait_ready()
        seen = self._generation
        if not await self.queue.may_send():
            # Another replica sends: a permit taken here would spend the deployment's shared
            # quota on a claim that must come back empty.
            circuit.release()
            await asyncio.sleep(NOT_SENDER_RECHECK_SECONDS)
            return True
        if idle and self.cortex.linger_ms:
            await asyncio.sleep(self.cortex.linger_ms / 1000)  # let a burst coalesce
        permit = await self.client.bucket.acquire()
        if self._stopping or not self._auth_ok.is_set():
            permit.cancel()
            circuit.release()
            return idle
        try:
            batch = await self.queue.claim(self.policy)
        except BaseException:
            permit.cancel()
            circuit.release()
            raise
        if not batch:
            permit.cancel()
            circuit.release()
            await self._wait_for_work(seen)
            return True
        self._in_flight += 1
        try:
            await self._send(batch, permit)
        except Exception as exc:
            await self._recover(batch, exc)
        finally:
            self._in_flight -= 1
            circuit.release()  # a no-op once the probe was sent
        return False

    async def _recover(self, batch: list[QueuedRecord], exc: Exception) -> None:
        """An unexpected error (e.g. the disk failed while recording an outcome).

        The request may have been sent, so a non-idempotent batch becomes ambiguous rather than
        ready (the read-back finds it if Cortex stored it). If even that cannot be written now,
        the batch is kept in memory and recorded as soon as the disk takes writes again; after a
        crash the records are still SENDING in the database and are read back at the next start.
        """
        kind = batch[0].record.kind
        log.error("send_failed_unexpectedly", kind=kind, records=len(batch), error=repr(exc))
        try:
            await self._record_unknown_outcome(batch, f"internal error: {exc!r}")
        except Exception as again:
            log.error("outcome_not_recorded", kind=kind, records=len(batch), error=repr(again))
            self._unrecorded.append(batch)

    async def _record_unknown_outcome(self, batch: list[QueuedRecord], error: str) -> None:
        if batch[0].record.kind in self.policy.ambiguous_kinds:
            await self._read_back_before_resend(batch, error)
        else:
            await self.dispositions.reschedule(batch, error, count_attempt=True)

    async def _unrecorded_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            while self._unrecorded:
                try:
                    await self._record_unknown_outcome(self._unrecorded[0], "outcome not recorded (disk error)")
                except Exception:
                    break  # still failing: try again in a second
                self._unrecorded.pop(0)

    async def _wait_for_work(self, seen: int) -> None:
        due = await self.queue.next_due_at()
        timeout = 5.0 if due is None else min(5.0, max(0.01, due - time.time()))
        async with self._work:
            if self._generation != seen:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), timeout)

    # -- one request ---------------------------------------------------------------------------

    async def _send(self, batch: list[QueuedRecord], permit: Permit) -> None:
        batch = await self.dispositions.drop_too_old(batch)
        if not batch:
            permit.cancel()
            return
        docs = batch[0].record.kind == "docs"
        async with self.docs.lock(batch[0].record.entity) if docs else contextlib.nullcontext():
            if docs and await self.docs.superseded(batch):
                permit.cancel()
                return await self.dispositions.delivered([], None, superseded=batch)
            await self._send_batch(batch, permit)

    async def _send_batch(self, batch: list[QueuedRecord], permit: Permit) -> None:
        if not self.coalescer.handles(batch[0].record):
            return await self._write(build_request(batch), permit, batch[0].record.kind in IDEMPOTENT_KINDS)
        async with self.coalescer.turn(batch[0]) as planned:
            if planned.write is None:
                permit.cancel()
                return await self.coalescer.wait(batch[0], planned)
            await self._write(BatchRequest(planned.write, {batch[0].record.entity: batch}, []), permit,
                              planned.idempotent)

    async def _write(self, request: BatchRequest, permit: Permit, idempotent: bool) -> None:
        try:
            response = await self.client.write(request.write, permit=permit)
        except (NotSent, Ambiguous) as exc:
            verdict = classify_failure(exc, resend_is_harmless=idempotent)
        else:
            verdict = classify_response(response, request.records[0].record.kind)
        await self._apply(request, verdict)

    async def _apply(self, request: BatchRequest, verdict: Verdict) -> None:
        """Record ``verdict`` for every record of ``request`` (see :mod:`bridge.sender.outcomes`)."""
        batch = request.records
        outcome = verdict.outcome
        if outcome is Outcome.DELIVERED:
            missing = verdict.missing
            delivered = [q for tag, items in request.entities.items() if tag not in missing for q in items]
            if delivered:
                await self.dispositions.delivered(delivered, verdict.cortex_uuid, superseded=[
                    q for q in request.superseded if q.record.entity not in missing])
                await self.docs.delivered(delivered)
                if self.edges is not None:
                    await self.edges.reported(delivered)
            not_found = [q for q in batch if q.record.entity in missing]
            if not_found:
                await self.dispositions.not_found(not_found, f"entity not found in Cortex: {sorted(missing)}")
        elif outcome is Outcome.RATE_LIMITED:
            # The client paused the bucket; the records go back without using an attempt.
            await self.dispositions.reschedule(batch, verdict.error, count_attempt=False)
        elif outcome is Outcome.AUTH:
            await self.dispositions.reschedule(batch, verdict.error, count_attempt=False)
            self._auth_failed(verdict.status or 0, verdict.message)
        elif outcome is Outcome.NOT_FOUND and not request.several_targets:
            await self.dispositions.not_found(batch, verdict.error)
        elif outcome in (Outcome.REJECT, Outcome.NOT_FOUND):
            carried = [q for items in request.entities.values() for q in items]
            if request.superseded:
                # Made redundant by a newer value in this batch: never sent, whatever Cortex
                # says of the newer one (sending them one by one would overwrite it).
                await self.dispositions.delivered([], None, superseded=request.superseded)
            if len(carried) > 1:
                await self._isolate(carried)
            else:
                await self.dispositions.dead(carried, "rejected", verdict.error, verdict.status)
        elif outcome is Outcome.AMBIGUOUS:
            log.warning("delivery_ambiguous", kind=batch[0].record.kind, records=len(batch), error=verdict.error)
            await self._read_back_before_resend(batch, verdict.error)
        else:
            await self.dispositions.retry_later(batch, verdict.error)

    async def _read_back_before_resend(self, batch: list[QueuedRecord], error: str) -> None:
        """Mark the records ambiguous and wake the reconcile loop, which reads them back."""
        await self.queue.mark_ambiguous([q.seq for q in batch], error)
        self._ambiguous_pending.set()

    async def _isolate(self, batch: list[QueuedRecord]) -> None:
        """A bulk request was rejected: send its records one by one to find the bad ones."""
        for q in batch:
            request = build_request([q])
            try:
                response = await self.client.write(request.write)
            except (NotSent, Ambiguous) as exc:
                # Unanswered, an isolated record has always been read back first, whatever its kind.
                verdict = classify_failure(exc, resend_is_harmless=False)
            else:
                verdict = classify_response(response, q.record.kind)
            await self._apply(request, verdict)

    # -- auth ----------------------------------------------------------------------------------

    def _auth_failed(self, status: int, message: str) -> None:
        if not self.auth.failed:
            log.error("cortex_token_rejected", status=status, message=message,
                      hint="check the Cortex API token and its permissions; sending is paused")
        self.auth = AuthState(True, status, message)
        self._auth_ok.clear()
        metrics.CORTEX_AUTH_FAILED.set(1)

    def _auth_restored(self) -> None:
        if self.auth.failed:
            log.info("cortex_token_accepted")
        self.auth = AuthState()
        self._auth_ok.set()
        metrics.CORTEX_AUTH_FAILED.set(0)
        self.notify()

    async def verify_token(self) -> CortexResponse | None:
        """Check the token now; update the auth state. None when Cortex could not be reached."""
        try:
            resp = await self.client.verify_token()
        except (NotSent, Ambiguous) as exc:
            log.warning("cortex_unreachable", error=str(exc))
            return None
        verdict = classify_response(resp)
        if verdict.outcome is Outcome.AUTH:
            self._auth_failed(resp.status, verdict.message)
        elif verdict.outcome is Outcome.DELIVERED:
            self._auth_restored()
        return resp

    async def _auth_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.retry.auth_recheck_seconds)
            if self.auth.failed:
                await self.verify_token()

    # -- ambiguity -----------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        """Read back ambiguous records once they have settled; never dies (one bad pass backs off)."""
        delay = 1.0
        while not self._stopping:
            try:
                await self._until_ambiguous_settled()
                await self._auth_ok.wait()
                if not self.cortex.reconcile_ambiguous:
                    await self._resend_ambiguous()
                    continue
                # Cortex down: wait for it (and, half-open, be the probe) rather than fail reads.
                await self.client.circuit.wait_ready()
                _, left = await reconcile_ambiguous(self.queue, self.client)
            except Exception as exc:
                log.error("reconcile_failed", error=repr(exc))
                left = 1
            finally:
                self.client.circuit.release()  # a no-op unless a reservation went unused
            if left:
                # Reads failed (Cortex down?) or a lane moved while read: try again later, backing off.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
            else:
                delay = 1.0

    async def _until_ambiguous_settled(self) -> None:
        """Wait until some ambiguous record's settle time has passed."""
        while True:
            self._ambiguous_pending.clear()
            due = await self.queue.next_settled_at()
            wait = None if due is None else due - time.time()
            if wait is not None and (wait <= 0 or not self.cortex.reconcile_ambiguous):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ambiguous_pending.wait(), wait)

    async def _resend_ambiguous(self) -> None:
        """Reconciliation disabled: accept possible duplicates and resend."""
        items = await self.queue.ambiguous()
        if items:
            await self.dispositions.reschedule(items, "ambiguous; resending without read-back", count_attempt=False)
