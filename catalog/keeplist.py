"""What a quantizer should keep in full precision, from a scan (`superweights export --keep-list`).

Holding the few super weights out of quantization rescues round-to-nearest (Yu et al. 2024,
Sec. 4.2; `--quant-check`'s "keep SW" rows measure it). Quantizers take that as names of whole
tensors or modules, each in its own convention, or as the scalars themselves:

- `llama.cpp`: `llama-quantize` arguments, one `--tensor-type PATTERN=f16` per tensor, on its
  GGUF name (`blk.11.ffn_down.weight`, `catalog.gguf_names`). llama-quantize matches PATTERN as a
  regular expression anywhere in a tensor's name, so its dots are escaped (a shell that eats the
  backslashes leaves `.`, which still matches them).
- `bitsandbytes`: `llm_int8_skip_modules`, and `llm-compressor`: the `ignore` list; both are
  module names of the transformers model (the state-dict name without its parameter), as JSON.
- `restore`: each scalar with its tensor's state-dict name and shape, its index in the stored
  layout (`tensor_index`) and its full-precision value, for `superweights apply-restore` or any
  tool that quantizes whole tensors and writes the few scalars back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from catalog.errors import KeepListError
from catalog.gguf_meta import read_tensor_names
from catalog.gguf_names import gguf_name
from catalog.result import CONFIRMED, ScanResult, SuperWeight

ALL = "all"
VERDICT_CHOICES = (CONFIRMED, ALL)
LLAMA_CPP_TYPE = "f16"  # the type llama-quantize keeps the tensors at: full precision, as the paper keeps the weight
RESTORE_FORMAT = "superweights-restore"
RESTORE_VERSION = 1


@dataclass(frozen=True)
class KeepList:
    """One tool's keep list for one scan: the names it holds and the file's text."""

    format: str
    weights: list[SuperWeight]  # the super weights it keeps
    names: list[str]  # what the tool is given: GGUF tensor names, module names or state-dict names
    text: str


def chosen(result: ScanResult, verdict: str = CONFIRMED) -> list[SuperWeight]:
    """The scan's confirmed super weights, or (`all`) every candidate it found."""
    return list(result.super_weights) if verdict == ALL else [w for w in result.super_weights if w.verdict == verdict]


def keep_list(result: ScanResult, fmt: str, verdict: str = CONFIRMED) -> KeepList:
    """The keep list of format `fmt` (one of `FORMATS`) for the scan's `verdict` weights."""
    weights = chosen(result, verdict)
    names, text = FORMATS[fmt](result, weights)
    return KeepList(fmt, weights, names, text)


def module_name(weight: SuperWeight) -> str:
    """The module holding the weight's tensor: `model.layers.11.mlp.down_proj` (fused experts: `...mlp.experts`)."""
    return weight.param.rpartition(".")[0]


def _gguf_tensor(result: ScanResult, weight: SuperWeight) -> str:
    name = gguf_name(weight.param, weight.layer)
    if name is None:
        raise KeepListError(result.model.source, f"{weight.param} has no GGUF tensor name in llama.cpp's table (the gguf package); "
                                                 "use --keep-list restore, or upgrade gguf.")
    return name


def _llama_cpp(result: ScanResult, weights: list[SuperWeight]) -> tuple[list[str], str]:
    names = list(dict.fromkeys(_gguf_tensor(result, w) for w in weights))
    return names, "".join(f"--tensor-type {re.escape(n)}={LLAMA_CPP_TYPE} " for n in names).rstrip() + "\n" * bool(names)


def _modules(result: ScanResult, weights: list[SuperWeight]) -> tuple[list[str], str]:
    names = list(dict.fromkeys(map(module_name, weights)))
    return names, json.dumps(names, indent=2) + "\n"


def _restore(result: ScanResult, weights: list[SuperWeight]) -> tuple[list[str], str]:
    if unshaped := [w.param for w in weights if w.tensor_shape is None]:
        raise KeepListError(result.model.source, f"its scan did not record the shape of {unshaped[0]} (scanned before "
                                                 "superweights kept shapes); scan it again for a restore file.")
    model = result.model
    document = {
        "format": RESTORE_FORMAT, "version": RESTORE_VERSION,
        "model": {"source": model.source, "repo_id": model.repo_id, "revision": model.revision, "fingerprint": model.fingerprint},
        "scalars": [{"param": w.param, "tensor_shape": w.tensor_shape, "tensor_index": w.tensor_index, "value": w.value,
                     "layer": w.layer, "row": w.row, "col": w.col, "expert": w.expert, "verdict": w.verdict} for w in weights],
    }
    return [w.param for w in weights], json.dumps(document, indent=2) + "\n"


Writer = Callable[[ScanResult, list[SuperWeight]], tuple[list[str], str]]  # (names, text)
FORMATS: dict[str, Writer] = {"llama.cpp": _llama_cpp, "bitsandbytes": _modules, "llm-compressor": _modules, "restore": _restore}


def check_gguf(keep: KeepList, path: Path) -> None:
    """Refuse llama.cpp names that the GGUF file at `path` does not have."""
    try:
        tensors = set(read_tensor_names(path))
    except (OSError, ValueError) as exc:
        raise KeepListError(str(path), f"cannot read its tensor names ({exc}); give a GGUF file.") from exc
    if missing := [n for n in keep.names if n not in tensors]:
        raise KeepListError(str(path), f"has no tensor {missing[0]}; is it a GGUF of this model?")
