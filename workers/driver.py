"""The survey driver: feeds models through the download and scan stages and is the only DB writer.

Shape (one process, the Ray driver):

    candidates ──► fetch tasks (CPU, on the scan worker's node) ──► ready queue (bounded)
                                                                      │
    catalog ◄── save / record_failure ◄── Outcome ◄── ScanWorker actor (GPU) ◄┘

One `ScanWorker` actor per GPU slot (`gpus_per_scan` GPUs each, fractional allowed) loads
torch once and scans one model per call. Its node is known as soon as its process starts, and
downloads begin there while it is still loading torch; while it scans, the next `prefetch` models
download on its node, one at a time (they share the node's link: two at once would each arrive
later than the first alone), so the GPU never waits for the network when a model downloads
faster than the previous one scans. Each result is saved as it arrives, so an
interrupted survey loses at most the scans in flight; started again, it skips what is saved.
A worker that dies mid-scan is replaced and its model retried, at most `retries` times.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from catalog.config import ScanOptions
from catalog.sources import ResolvedSource, canonical, is_local, split_gguf, split_revision
from db.errors import CatalogError, UnsavedScanError
from db.scanfile import keep
from workers.discovery import Candidate
from workers.tasks import Fetched, Outcome, Scanner, fetch, now

log = logging.getLogger("superweights.survey")

# Forwarded to every Ray worker, so that a cluster's nodes download and authenticate like the driver.
FORWARDED_ENV = ("HF_TOKEN", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "SUPERWEIGHTS_HOME")


class CatalogWriter(Protocol):
    """What the driver needs of `db.repository.Catalog`."""

    def save(self, result: Any, *, started_at: datetime, finished_at: datetime) -> int: ...
    def record_failure(self, **row: Any) -> int: ...
    def known_as(self, info: Any) -> str | None: ...
    def has_scan(self, source: str, revision: str | None, config_hash: str, *, fingerprint: str | None = None,
                 include_failed: bool = False) -> bool: ...


@dataclass
class SurveySettings:
    gpus_per_scan: float = 1.0  # GPUs per scan worker; ignored (0) on a cluster without GPUs
    cpus_per_scan: float = 1.0
    workers: int | None = None  # scan workers; None: as many as the cluster's GPUs (or CPUs) fit
    prefetch: int = 1  # downloaded models waiting per worker while it scans
    retries: int = 2  # re-runs of a model whose worker died under it
    timeout: float | None = None  # seconds per scan; then its worker is killed and the model fails
    skip_failed: bool = False  # also skip models whose last scan at this revision failed
    allow_pickle: bool = False


@dataclass
class ModelReport:
    """One line of the survey summary."""

    spec: str
    status: str  # "scanned" | "failed" | "skipped"
    revision: str | None = None
    super_weights: int | None = None
    seconds: float | None = None
    error: str | None = None
    attempts: int = 1
    node: str | None = None  # the Ray node that scanned it
    pid: int = 0  # and the worker process


@dataclass
class SurveySummary:
    rows: list[ModelReport] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)


@dataclass
class Counts:
    """Progress for `on_update`: finished models are read off the summary's rows, so the two cannot disagree."""

    summary: SurveySummary
    total: int
    running: int = 0

    @property
    def scanned(self) -> int:
        return self.summary.count("scanned")

    @property
    def failed(self) -> int:
        return self.summary.count("failed")

    @property
    def skipped(self) -> int:
        return self.summary.count("skipped")

    @property
    def finished(self) -> int:
        return len(self.summary.rows)


@dataclass
class _Job:
    candidate: Candidate
    fetched: Fetched
    attempts: int = 0
    deadline: float | None = None
    timed_out: bool = False


@dataclass
class _Slot:
    """One scan worker and the models downloaded for it."""

    actor: Any
    node: str | None = None
    pid: int = 0
    ready: deque[_Job] = field(default_factory=deque)  # jobs whose files were fetched onto `node`
    fetching: int = 0
    job: _Job | None = None
    loaded: bool = False  # torch imported: ready to scan


class _Work(ABC):
    """A Ray call in flight, and what its answer does to the survey. Each kind says what its value
    means (`done`), what the death of the worker process under it means (`died`), and what any
    other Ray error means (`failed`: by default the survey cannot go on)."""

    @property
    def stale(self) -> bool:
        """An answer nothing waits for any more (its worker was replaced meanwhile)."""
        return False

    @abstractmethod
    def done(self, survey: Survey, value: Any) -> None: ...

    @abstractmethod
    def died(self, survey: Survey) -> None: ...

    def failed(self, survey: Survey, error: Exception) -> None:
        raise error


@dataclass
class _Ping(_Work):
    """A new worker's first two calls: `ping` answers with its node and pid as soon as its process
    runs (downloads can start there), `load` once it has loaded torch (it can scan)."""

    slot: _Slot
    actor: Any  # the worker asked
    load: bool = False

    @property
    def stale(self) -> bool:
        return self.actor is not self.slot.actor

    def done(self, survey: Survey, value: tuple[str, int] | None) -> None:
        if self.load:
            self.slot.loaded = True
            survey.worker_started()
        else:
            self.slot.node, self.slot.pid = value

    def died(self, survey: Survey) -> None:
        survey.worker_lost(self.slot)


@dataclass
class _Fetch(_Work):
    """A download task onto the slot's node."""

    slot: _Slot
    candidate: Candidate

    def done(self, survey: Survey, value: Fetched) -> None:
        self.slot.fetching -= 1
        survey.fetched(self.slot, self.candidate, value)

    def died(self, survey: Survey) -> None:
        self.failed(survey, RuntimeError("its worker died"))

    def failed(self, survey: Survey, error: Exception) -> None:
        """A task whose worker died more than `retries` times: the model fails, the survey goes on."""
        self.done(survey, Fetched(self.candidate.spec, None, f"download worker failed: {type(error).__name__}"))


@dataclass
class _Scan(_Work):
    """A scan on the slot's worker."""

    slot: _Slot
    job: _Job

    def done(self, survey: Survey, value: Outcome) -> None:
        self.slot.job = None
        survey.counts.running -= 1
        survey.scanned(self.job, value)

    def died(self, survey: Survey) -> None:
        survey.worker_died(self.slot)


def ray_remote(stage: Any) -> Any:
    """The Ray form of a stage. Scan actors are never restarted by Ray: the driver replaces them."""
    import ray

    return ray.remote(max_restarts=0, max_task_retries=0)(stage) if isinstance(stage, type) else ray.remote(stage)


def start_ray(address: str | None = None, **init: Any) -> None:
    """Connect to a cluster (`address`), or start a local Ray instance; forward the HF environment."""
    import ray

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    init.setdefault("include_dashboard", False)
    init.setdefault("log_to_driver", False)
    ray.init(address=address, runtime_env={"env_vars": env}, **init)


def plan_workers(settings: SurveySettings, models: int) -> tuple[int, float]:
    """How many scan workers the cluster fits, and the GPUs each asks for."""
    import ray

    resources = ray.cluster_resources()
    gpus = settings.gpus_per_scan if resources.get("GPU", 0) > 0 else 0.0
    if settings.workers:
        n = settings.workers
    elif gpus:
        n = int(resources["GPU"] // gpus)
    else:
        n = int(resources.get("CPU", 1) // max(settings.cpus_per_scan, 0.01))
    return max(1, min(n, models)), gpus


class Survey:
    """Run candidates through fetch and scan on the connected Ray cluster; save each outcome.

    One object runs one survey: its state (the summary, the queue, the calls in flight, the
    workers) is built here and filled by `run`.
    """

    def __init__(self, catalog: CatalogWriter, options: ScanOptions, settings: SurveySettings | None = None,
                 scanner: type[Scanner] = Scanner, on_update: Callable[[Counts], None] | None = None) -> None:
        self.catalog, self.options = catalog, options
        self.settings = settings or SurveySettings()
        self.worker_class = ray_remote(scanner)
        self.fetch_task = ray_remote(fetch)
        self.on_update = on_update or (lambda _counts: None)
        self.config, self.config_hash = options.to_config(), options.config_hash()
        self.summary = SurveySummary()
        self.counts = Counts(self.summary, total=0)
        self.pending: deque[Candidate] = deque()  # not yet downloading
        self.inflight: dict[Any, _Work] = {}  # by Ray object ref
        self.slots: list[_Slot] = []
        self.gpus = 0.0  # each worker's
        self._ping_failures = 0  # workers lost in a row before they loaded

    def run(self, candidates: list[Candidate]) -> SurveySummary:
        start = time.perf_counter()
        unique = _unique(candidates)
        todo = [c for c in unique if not self._known(c, c.revision)]
        self.summary.rows += [ModelReport(c.spec, "skipped", c.revision) for c in unique if c not in todo]
        self.counts.total = len(unique)
        self.pending.extend(todo)
        self.on_update(self.counts)
        if todo:
            try:
                self._loop()
            except KeyboardInterrupt:
                self.summary.interrupted = True
                log.warning("interrupted: finished scans are saved; run the same survey again to continue.")
            finally:
                self._stop()
        self.summary.seconds = round(time.perf_counter() - start, 1)
        return self.summary

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        import ray

        models = len(self.pending)
        n, self.gpus = plan_workers(self.settings, models)
        self.slots = [self._new_slot() for _ in range(n)]
        self.summary.workers = n
        log.info("survey: %d models, %d scan workers (%.2g GPU each), config %s", models, n, self.gpus, self.config_hash)
        while self.pending or self.inflight or any(s.ready for s in self.slots):
            self._feed()
            self._dispatch()
            if not self.inflight:
                raise RuntimeError("survey stalled: models wait but no worker or download is running")
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self._wait())
            for ref in done:
                self._collect(ref, self.inflight.pop(ref))
            self._expire()

    def _new_slot(self) -> _Slot:
        slot = _Slot(None)
        self._start_worker(slot)
        return slot

    def _start_worker(self, slot: _Slot) -> None:
        """A fresh scan actor for `slot`: it reports its node and pid at once, then loads torch."""
        worker = self.worker_class.options(num_gpus=self.gpus, num_cpus=self.settings.cpus_per_scan)
        slot.actor, slot.node, slot.pid, slot.loaded = worker.remote(self.options), None, 0, False
        self.inflight[slot.actor.ping.remote()] = _Ping(slot, slot.actor)
        self.inflight[slot.actor.load.remote()] = _Ping(slot, slot.actor, load=True)

    def _feed(self) -> None:
        """Start a download on each worker's node that has none running, up to `prefetch` models
        ahead of its scan."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for slot in sorted(self.slots, key=lambda s: len(s.ready) + s.fetching + (s.job is not None)):
            if slot.node and self.pending and not slot.fetching and len(slot.ready) + (slot.job is not None) <= self.settings.prefetch:
                candidate = self.pending.popleft()
                place = NodeAffinitySchedulingStrategy(slot.node, soft=True)  # soft: the node may die
                task = self.fetch_task.options(num_cpus=0, scheduling_strategy=place, max_retries=self.settings.retries)
                self.inflight[task.remote(candidate.spec, self.settings.allow_pickle)] = _Fetch(slot, candidate)
                slot.fetching += 1

    def _dispatch(self) -> None:
        """Give each idle worker a downloaded model: its own first, else one waiting on another worker."""
        for slot in self.slots:
            if slot.job is not None or not slot.loaded:
                continue  # busy, or still loading (a timeout counts from the scan's start)
            donor = slot if slot.ready else max(self.slots, key=lambda s: len(s.ready))
            if donor.ready:
                self._scan(slot, donor.ready.popleft())

    def _scan(self, slot: _Slot, job: _Job) -> None:
        job.attempts += 1
        job.deadline = time.monotonic() + self.settings.timeout if self.settings.timeout else None
        slot.job = job
        self.inflight[slot.actor.__call__.remote(job.fetched)] = _Scan(slot, job)
        self.counts.running += 1
        self.on_update(self.counts)

    def _wait(self) -> float:
        deadlines = [s.job.deadline for s in self.slots if s.job and s.job.deadline and not s.job.timed_out]
        return max(0.05, min([d - time.monotonic() for d in deadlines], default=1.0))

    def _expire(self) -> None:
        """Kill the worker of a scan past its deadline; its result then arrives as a worker death."""
        import ray

        for slot in self.slots:
            job = slot.job
            if job and job.deadline and not job.timed_out and time.monotonic() > job.deadline:
                job.timed_out = True
                log.warning("%s: timed out after %gs; killing its worker (pid %d)", job.candidate.spec, self.settings.timeout, slot.pid)
                ray.kill(slot.actor, no_restart=True)

    # -- results -------------------------------------------------------------------------------

    def _collect(self, ref: Any, work: _Work) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError

        if work.stale:
            return
        try:
            value = ray.get(ref)
        except RayActorError:
            return work.died(self)
        except RayError as exc:
            return work.failed(self, exc)
        work.done(self, value)

    def worker_started(self) -> None:
        self._ping_failures = 0

    def fetched(self, slot: _Slot, candidate: Candidate, fetched: Fetched) -> None:
        if fetched.error:
            return self._failed(candidate, fetched.error, candidate.revision, fetched.started_at, now())
        revision = fetched.source.revision
        if self._known(candidate, revision, fetched.source):
            self.summary.rows.append(ModelReport(candidate.spec, "skipped", revision))
            log.info("%s: already in the catalog at %s; skipped", candidate.spec, (revision or "local")[:12])
            return self.on_update(self.counts)
        slot.ready.append(_Job(candidate, fetched))

    def scanned(self, job: _Job, outcome: Outcome) -> None:
        spec, revision = job.candidate.spec, job.fetched.source.revision
        if outcome.error:
            return self._failed(job.candidate, outcome.error, revision, outcome.started_at, outcome.finished_at,
                                job.attempts, outcome.node)
        outcome.result.model.downloads = job.candidate.downloads
        try:
            if note := self.catalog.known_as(outcome.result.model):
                log.info("%s", note)  # the same weights under another name, or a new revision of this one
            self.catalog.save(outcome.result, started_at=outcome.started_at, finished_at=outcome.finished_at)
        except CatalogError as exc:  # locked, unreachable, disk full: the scan is kept, the survey goes on
            error = str(UnsavedScanError(exc, keep(outcome.result)))
            self.summary.rows.append(ModelReport(spec, "failed", revision, error=error, attempts=job.attempts, node=outcome.node))
            log.error("%s: scanned, not saved: %s", spec, error)
            return self.on_update(self.counts)
        found = len(outcome.result.super_weights)
        self.summary.rows.append(ModelReport(spec, "scanned", revision, found, round(outcome.seconds, 1),
                                             attempts=job.attempts, node=outcome.node, pid=outcome.pid))
        log.info("%s: scanned in %.1fs on pid %d%s: %d super weight candidates", spec, outcome.seconds,
                 outcome.pid, " (restarted worker)" if outcome.restarted else "", found)
        self.on_update(self.counts)

    def _failed(self, candidate: Candidate, error: str, revision: str | None, started: datetime,
                finished: datetime, attempts: int = 1, node: str | None = None) -> None:
        source = self._repo(candidate.spec)
        try:
            self.catalog.record_failure(
                source=candidate.spec, repo_id=source, revision=revision, config_hash=self.config_hash,
                config=self.config, error=error, started_at=started, finished_at=finished,
            )
        except CatalogError as exc:  # the summary below still says what failed
            log.warning("%s: the failure is not recorded in the catalog: %s", candidate.spec, exc)
        self.summary.rows.append(ModelReport(candidate.spec, "failed", revision, error=error, attempts=attempts,
                                             seconds=round((finished - started).total_seconds(), 1), node=node))
        log.warning("%s: failed: %s", candidate.spec, error)
        self.on_update(self.counts)

    def worker_died(self, slot: _Slot) -> None:
        """The scan's worker process is gone: killed by us (timeout), by the OS, or by anyone."""
        job, slot.job, dead_pid = slot.job, None, slot.pid
        self.counts.running -= 1
        self._replace(slot)
        if job.timed_out:
            return self._failed(job.candidate, f"timed out after {self.settings.timeout:g}s (--timeout); scanned nothing.",
                                job.fetched.source.revision, job.fetched.started_at, now(), job.attempts)
        if job.attempts > self.settings.retries:
            return self._failed(job.candidate, f"the scan worker died {job.attempts} times while scanning this model "
                                "(killed, or out of host memory); scan it alone with `superweights scan` to see why.",
                                job.fetched.source.revision, job.fetched.started_at, now(), job.attempts)
        log.warning("%s: worker pid %d died mid-scan (attempt %d of %d); retrying on a new worker",
                    job.candidate.spec, dead_pid, job.attempts, self.settings.retries + 1)
        slot.ready.appendleft(job)

    def worker_lost(self, slot: _Slot) -> None:
        """A worker that died before it could load."""
        self._ping_failures += 1
        if self._ping_failures > 3 * len(self.slots):
            raise RuntimeError("scan workers keep dying before they start; see the Ray logs (ray logs worker-*).")
        if slot.job is None:
            self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
        """A dead worker's slot gets a fresh actor, wherever the cluster has room now."""
        import ray

        ray.kill(slot.actor, no_restart=True)
        self._start_worker(slot)

    def _known(self, candidate: Candidate, revision: str | None, source: ResolvedSource | None = None) -> bool:
        """Whether the catalog has this scan: by name and revision, and once fetched by its weights too."""
        if revision is None and candidate.revision is None:
            return False  # a Hub revision or local fingerprint not known yet: check after the download
        name = source.source if source else _unpinned(candidate.spec)
        try:
            return self.catalog.has_scan(name, revision, self.config_hash, fingerprint=source and source.fingerprint,
                                         include_failed=self.settings.skip_failed)
        except CatalogError as exc:  # locked for now: scan it (a result that cannot be saved is kept in a file)
            log.warning("%s: cannot tell whether the catalog has it (%s); scanning it", candidate.spec, exc)
            return False

    @staticmethod
    def _repo(spec: str) -> str | None:
        return None if is_local(spec) else split_revision(split_gguf(spec)[0])[0]

    def _stop(self) -> None:
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)


def _unpinned(spec: str) -> str:
    """A spec without its revision: the catalog's name for it (a local path is canonical already)."""
    if is_local(spec):
        return spec
    repo, gguf = split_gguf(spec)
    return split_revision(repo)[0] + (f":{gguf}" if gguf else "")


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    """One candidate per source, however its path was typed (`./m`, `m`, /abs/m: one directory)."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(canonical(c.spec), c)
    return list(seen.values())
