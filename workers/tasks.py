"""The two Ray stages of a survey: `fetch` (download, CPU, IO-bound) and `Scanner` (load + detect).

Both are plain Python first: `fetch(spec)` and `Scanner(options)(fetched)` run in-process in
tests; `remote_fetch` and `ScanWorker` wrap them for Ray. Neither raises for a bad model: each
returns its error as data, so one model's failure never takes a survey down. Only a worker that
dies (killed, out of host memory) surfaces as a Ray error, which the driver retries.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from catalog.config import ScanOptions
from catalog.errors import SuperweightsError, first_line
from catalog.result import ScanResult
from catalog.scanner import scan_source
from catalog.sources import ResolvedSource, resolve


def now() -> datetime:
    return datetime.now(UTC)


def describe_error(exc: BaseException) -> str:
    """One line for the catalog's error column: our typed errors already name the input and fix (the
    line `superweights scan` prints); anything else is a bug, and is called one."""
    if isinstance(exc, SuperweightsError):
        return str(exc)
    name, line = type(exc).__name__, first_line(exc)
    what = name if line == name else f"{name}: {line[:300]}"  # an empty message: the type alone
    return f"unexpected {what}; `SUPERWEIGHTS_DEBUG=1 superweights scan` of this model alone shows the traceback."


def node_id() -> str | None:
    """The Ray node this process runs on, or None outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@dataclass
class Fetched:
    """The download stage's output: files on the fetching node's disk, or why there are none."""

    spec: str
    source: ResolvedSource | None
    error: str | None = None
    started_at: datetime = field(default_factory=now)


def fetch(spec: str, allow_pickle: bool = False) -> Fetched:
    """Resolve (download) one model's files into this node's HF cache. Never raises for a bad model."""
    started = now()
    try:
        source, error = resolve(spec, allow_pickle=allow_pickle), None
    except Exception as exc:  # gated, missing, corrupt layout, disk full: all become a failed row
        source, error = None, describe_error(exc)
    return Fetched(spec, source, error, started)


@dataclass
class Outcome:
    """The scan stage's output for one model: a result, or the error that stopped it."""

    spec: str
    result: ScanResult | None
    error: str | None
    started_at: datetime
    finished_at: datetime
    node: str | None = None
    pid: int = 0
    restarted: bool = False  # ran in a worker that Ray restarted after it died

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class Scanner:
    """Loads once (torch, transformers: `load`), then is called on one fetched model at a time.

    The Ray shape of a stateful stage: `ScanWorker = ray.remote(Scanner)`; call it locally in tests.
    Constructing it imports nothing heavy, so that `ping` tells the driver where it runs (and
    downloads start there) while `load` is still importing.
    """

    def __init__(self, options: ScanOptions) -> None:
        self.options = options

    def __call__(self, fetched: Fetched) -> Outcome:
        started = now()
        try:
            result, error = scan_source(self._local(fetched), self.options), None
        except Exception as exc:  # unsupported, corrupt, GPU out of memory...
            result, error = None, describe_error(exc)
            _free_gpu_memory()
        return Outcome(fetched.spec, result, error, started, now(), node_id(), os.getpid(), _restarted())

    def ping(self) -> tuple[str | None, int]:
        """Where this worker runs: (node id, pid)."""
        return node_id(), os.getpid()

    def load(self) -> None:
        """The heavy imports, once per worker, before its first scan."""
        import torch  # noqa: F401
        import transformers  # noqa: F401

    @staticmethod
    def _local(fetched: Fetched) -> ResolvedSource:
        """The fetched files, or a fresh download if they are on another node's disk (per-node caches)."""
        source = fetched.source
        assert source is not None, "the driver only scans what was fetched"
        if source.path.exists():
            return source
        return replace(resolve(source.again), spec=source.spec)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _restarted() -> bool:
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False  # a local call (tests), not inside an actor
    with warnings.catch_warnings():  # Ray's own property reads a deprecated attribute
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
