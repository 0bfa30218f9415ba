"""Typed errors of the domain core. Each names the input it is about and, in its message, the fix.

The CLI turns any of these into one line and a non-zero exit (see `catalog.cli.main`).
"""

from __future__ import annotations


class SuperweightsError(Exception):
    """Base class: a failure the user can fix, with a one-line message saying how."""

    exit_code = 1


class SourceNotFoundError(SuperweightsError, FileNotFoundError):
    """A path, repo id or revision that does not exist (or is not cached while offline)."""

    def __init__(self, source: str, fix: str) -> None:
        super().__init__(f"{source}: not found. {fix}")
        self.source = source


class GatedSourceError(SuperweightsError, PermissionError):
    """A Hub repo that needs an accepted license and a token."""

    def __init__(self, source: str) -> None:
        super().__init__(
            f"{source}: gated repo. Accept its license on the Hub, then set HF_TOKEN "
            "(or run `hf auth login`)."
        )
        self.source = source


class InvalidSourceError(SuperweightsError, ValueError):
    """A source that exists but cannot be scanned as it is (no config, corrupt file, pickle...)."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source


class UnsupportedArchitectureError(SuperweightsError, ValueError):
    """A model in which `catalog.architectures` cannot find what a scan needs."""

    def __init__(self, source: str, model_type: str, problem: str) -> None:
        super().__init__(f"{source}: cannot scan model type {model_type!r}: {problem}.")
        self.source = source
        self.model_type = model_type
        self.problem = problem


class BadOptionError(SuperweightsError, ValueError):
    """An option value that cannot be used (empty prompt, unknown device, empty eval text...)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


class NonFiniteError(SuperweightsError, ValueError):
    """A number of the scan that is NaN or inf: refused before it reaches the JSON or the catalog."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is not a finite number (NaN or inf): the weights hold NaN or inf, or the dtype overflows; "
            "try --dtype float32, or download the checkpoint again."
        )
        self.what = what


class UnwritableOutputError(BadOptionError):
    """An output path (`--json`, `--out`, `--parquet`) that cannot be written."""

    def __init__(self, option: str, path: object, reason: str) -> None:
        super().__init__(option, f"cannot write {path} ({reason}); choose a writable path.")
        self.path = path


class KeepListError(SuperweightsError, ValueError):
    """A keep list that cannot be written from this scan (`superweights export --keep-list`)."""

    def __init__(self, model: str, problem: str) -> None:
        super().__init__(f"{model}: {problem}")
        self.model = model


class RestoreError(SuperweightsError, ValueError):
    """A restore file, or a checkpoint it does not fit, that `apply-restore` refuses; nothing was written."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class ScanOutOfMemoryError(SuperweightsError, MemoryError):
    """The GPU or the host ran out of memory during a scan: the model is too large for where it ran,
    not a bad file (which is what an allocation failure inside transformers' loader would suggest)."""

    FIX = {
        "GPU": "stream its blocks with --max-gpu-memory SIZE (Llama-family safetensors) or scan it on a larger GPU "
               "(a survey: more --gpus-per-scan)",
        "host": "scan it on a machine with more memory",
    }

    def __init__(self, source: str, memory: str, detail: str) -> None:
        super().__init__(f"{source}: out of {memory} memory ({detail[:200]}); {self.FIX[memory]}.")
        self.source = source
        self.memory = memory


def memory_shortage(exc: BaseException) -> str | None:
    """"GPU" or "host" when `exc` is an allocation failure, else None. By name and message, so that
    this module needs no torch: torch raises `OutOfMemoryError` for CUDA, a RuntimeError from its
    CPU allocator and from MPS, numpy and Python a `MemoryError`."""
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or "MPS backend out of memory" in text:
        return "GPU"
    if isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in text:
        return "host"
    return None


class SurveyFailedError(SuperweightsError):
    """A survey in which no model was scanned or skipped: every one failed."""

    def __init__(self, failed: int) -> None:
        super().__init__(f"all {failed} models of the survey failed; the error column above says why for each.")
        self.failed = failed


def first_line(exc: BaseException | None) -> str:
    """A one-line reason for messages and error columns: drivers' messages span lines or are empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
