"""Scheduling chunks of jobs over the actors, with retries after an actor's death.

:class:`Restarts` watches actors that Ray is restarting (it outlives a ``run`` call);
:class:`ChunkRun` is one ``run(jobs)`` call: the queue of chunks, the calls in flight per actor,
each job's attempts and result.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from fedsim.executors.ray.connect import describe_error
from fedsim.executors.ray.objects import unpack_result
from fedsim.executors.worker import CLIENT_BUG_ERRORS, failed_result
from fedsim.types import ClientJob, ClientResult

log = logging.getLogger("fedsim")

PROBE_EVERY = 0.25  # seconds between "are you back?" calls to a restarting actor


class Restarts:
    """Actors Ray is restarting (``max_restarts=-1``): each is asked ``ready()`` until it answers; one
    not back within ``restart_timeout`` seconds (or that cannot restart) leaves the pool (``actors[i] = None``)."""

    def __init__(self, ray: Any, actors: list[Any], restart_timeout: float):
        self._ray = ray
        self.actors = actors  # the executor's list: a dropped actor becomes None in it
        self.restart_timeout = restart_timeout
        self.probes: dict[Any, tuple[int, float]] = {}  # ready() call on a restarting actor -> (index, since)
        self._reprobe: dict[int, tuple[float, float]] = {}  # actor index -> (probe again at, since)

    def restarting(self) -> set[int]:
        return {i for i, _ in self.probes.values()} | set(self._reprobe)

    def any(self) -> bool:
        return bool(self.probes or self._reprobe)

    def start(self, i: int, since: float | None = None) -> None:
        """Ask a dead actor's replacement whether it is up."""
        probe = self.actors[i].ready.remote()
        self.probes[probe] = (i, time.monotonic() if since is None else since)

    def wait(self) -> float | None:
        """Seconds until the next probe must be re-sent or given up (None: no probes)."""
        times = [since + self.restart_timeout for _, since in self.probes.values()]
        times += [at for at, _ in self._reprobe.values()]
        return max(0.0, min(times) - time.monotonic()) if times else None

    def finish(self, ref: Any) -> int | None:
        """A probe answered: the actor's index if it is back, else None (asked again or dropped)."""
        i, since = self.probes.pop(ref)
        try:
            self._ray.get(ref)
        except self._ray.exceptions.ActorUnavailableError:  # still restarting: ask again shortly
            self._reprobe[i] = (time.monotonic() + PROBE_EVERY, since)
            return None
        except self._ray.exceptions.RayError as exc:  # gone for good (e.g. its constructor raised)
            self._drop(i, describe_error(exc))
            return None
        log.info("ray executor: worker %d restarted after %.1fs", i, time.monotonic() - since)
        return i

    def tick(self) -> None:
        """Re-send probes that are due; give up on actors past ``restart_timeout``."""
        now = time.monotonic()
        for i, (at, since) in list(self._reprobe.items()):
            if now - since >= self.restart_timeout:
                del self._reprobe[i]
                self._drop(i, f"not back after {self.restart_timeout:g}s")
            elif now >= at:
                del self._reprobe[i]
                self.start(i, since)
        for ref, (i, since) in list(self.probes.items()):
            if now - since >= self.restart_timeout:
                del self.probes[ref]
                self._drop(i, f"not back after {self.restart_timeout:g}s")

    def clear(self) -> None:
        self.probes.clear()
        self._reprobe.clear()

    def _drop(self, i: int, why: str) -> None:
        actor, self.actors[i] = self.actors[i], None
        left = sum(a is not None for a in self.actors)
        log.warning("ray executor: worker %d could not be restarted (%s); %d worker(s) left", i, why, left)
        try:
            self._ray.kill(actor)
        except Exception:  # noqa: BLE001
            pass


class ChunkRun:
    """One ``run(jobs)`` call on the pool of ``executor``.

    Chunks form one queue; each actor has at most ``executor.pipeline`` calls in flight, every
    actor gets a call before any gets a second, and an actor gets the next chunk as soon as one
    finishes. A job that was on an actor when it died is retried once, alone (:meth:`_on_death`).
    The executor's counters (calls, jobs_sent, deaths, retries) are updated as calls go out.
    """

    def __init__(self, executor: Any, jobs: list[ClientJob], light: list[ClientJob], boxes: list[list[Any]]):
        self.ex = executor
        self.ray = executor._ray
        self.restarts: Restarts = executor._restarts
        self.jobs = jobs
        self.light = light  # jobs as sent (params and broadcast by ref in ``boxes``)
        self.boxes = boxes
        self.results: list[ClientResult | None] = [None] * len(jobs)
        self.attempts = [0] * len(jobs)
        self.solo: set[int] = set()  # jobs that were on a worker when it died: each now runs alone
        restarting = self.restarts.restarting()
        self.alive = {i for i, actor in enumerate(executor._actors) if actor is not None and i not in restarting}
        size = executor._chunk_length(len(jobs), len(self.alive))
        self.queue = collections.deque(
            list(range(start, min(start + size, len(jobs))))  # chunks of job indices
            for start in range(0, len(jobs), size)
        )
        self.inflight: dict[Any, tuple[int, list[int]]] = {}  # call ref -> (actor index, job indices)
        self.per_actor: dict[int, list[Any]] = {i: [] for i in range(len(executor._actors))}  # in submission order

    def run(self) -> list[ClientResult]:
        while self.queue or self.inflight:
            self.restarts.tick()
            self._submit()
            waiting = list(self.inflight) + list(self.restarts.probes)
            if not waiting:
                if not self.restarts.any():
                    raise RuntimeError(f"ray executor: no workers left to run {sum(map(len, self.queue))} job(s)")
                time.sleep(self.restarts.wait() or 0.0)
                continue
            done, _ = self.ray.wait(waiting, num_returns=1, timeout=self.restarts.wait())
            if not done:
                continue
            ref = done[0]
            if ref in self.restarts.probes:
                back = self.restarts.finish(ref)
                if back is not None:
                    self.alive.add(back)
                continue
            self._collect(ref)
        return self.results  # type: ignore[return-value]

    def _alone(self, chunk: list[int]) -> bool:
        return len(chunk) == 1 and chunk[0] in self.solo

    def _submit(self) -> None:
        ex, per_actor = self.ex, self.per_actor
        for depth in range(ex.pipeline):  # every actor gets a call before any gets a second one
            for i in sorted(self.alive, key=lambda k: len(per_actor[k])):  # least busy first
                if not self.queue or len(per_actor[i]) > depth:
                    continue
                chunk = self.queue[0]
                if per_actor[i] and (self._alone(chunk) or self._alone(self.inflight[per_actor[i][0]][1])):
                    continue  # a job retried after a death runs alone: a second death is its own
                self.queue.popleft()
                call = ex._actors[i].run_chunk.remote(
                    ex.inner, [self.light[j] for j in chunk], [self.boxes[j] for j in chunk]
                )
                ex.calls += 1
                ex.jobs_sent += len(chunk)
                self.inflight[call] = (i, chunk)
                per_actor[i].append(call)

    def _collect(self, ref: Any) -> None:
        ray = self.ray
        i, chunk = self.inflight.pop(ref)
        try:
            chunk_results = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.alive.discard(i)
            calls = [(call, chunk if call == ref else self.inflight.pop(call)[1]) for call in self.per_actor[i]]
            self.per_actor[i] = []
            self._on_death(i, calls, ref, exc)
            return
        except ray.exceptions.RayError as exc:  # e.g. a result that could not be deserialised
            if isinstance(exc, CLIENT_BUG_ERRORS):  # raised by the client code (Ray re-raises as its class)
                raise
            self.per_actor[i].remove(ref)
            if len(chunk) > 1:  # find the job it belongs to: each runs alone once more
                self.queue.extendleft([j] for j in reversed(chunk))
            else:
                self.results[chunk[0]] = failed_result(self.jobs[chunk[0]], describe_error(exc))
            return
        self.per_actor[i].remove(ref)
        for j, result in zip(chunk, chunk_results, strict=True):
            self.results[j] = unpack_result(result)

    def _on_death(self, i: int, calls: list[tuple[Any, list[int]]], failed: Any, exc: BaseException) -> None:
        """Actor ``i`` died with ``calls`` (each a chunk of jobs) unfinished on it, in submission order.

        Which job killed it is unknown (a chunk holds several, several calls may be in flight, and
        a finished call's reply can be lost with the process too), so each job of those calls is
        charged one attempt and re-queued to run *alone* on a worker: a job whose solo retry kills
        its worker again is a dropout, and an innocent job never dies twice. Calls that did finish
        are kept.
        """
        ray, jobs = self.ray, self.jobs
        self.ex.deaths += 1
        cause = type(exc).__name__  # Ray's message is long and says no more than "the process died"
        suspects: list[int] = []
        for call, chunk in calls:
            if call != failed and ray.wait([call], timeout=0)[0]:
                try:  # it finished before the death: keep its results
                    for j, result in zip(chunk, ray.get(call), strict=True):
                        self.results[j] = unpack_result(result)
                    continue
                except ray.exceptions.RayError:
                    pass
            suspects.extend(chunk)
        retry: list[int] = []
        for j in suspects:
            self.attempts[j] += 1
            job = jobs[j]
            if self.attempts[j] >= 2:
                self.results[j] = failed_result(job, f"its ray worker process died twice running this client ({cause})")
                log.warning(
                    "ray worker process died (%s) again running client %d (version %d) alone; counting it as a dropout",
                    cause,
                    job.client_id,
                    job.version,
                )
            else:
                retry.append(j)
        if retry:
            self.ex.retries += len(retry)
            self.solo.update(retry)
            clients = ", ".join(f"{jobs[j].client_id} (version {jobs[j].version})" for j in retry)
            log.warning(
                "ray worker process died (%s) with client(s) %s in flight; restarting it and retrying each "
                "of these jobs once, alone on a worker",
                cause,
                clients,
            )
        self.queue.extendleft([j] for j in reversed(retry))
        self.restarts.start(i)
