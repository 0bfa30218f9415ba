"""Load a resolved source once, in the requested dtype and device, with its tokenizer and adapter."""

from __future__ import annotations

import json
import pickle
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from catalog.architectures import Adapter, adapter_for
from catalog.errors import BadOptionError, InvalidSourceError, SuperweightsError
from catalog.family import family_name
from catalog.result import ModelInfo
from catalog.sources import ResolvedSource

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_QUANT = re.compile(r"(I?Q\d+_[A-Z0-9_]+|I?Q\d+|BF16|F16|F32)", re.IGNORECASE)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    adapter: Adapter
    info: ModelInfo
    device: torch.device
    load_seconds: float


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadOptionError("--device", f"{device!r} asked for but no CUDA GPU is visible; use --device cpu.")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise BadOptionError("--dtype", f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def load(source: ResolvedSource, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """Read the checkpoint once. Failures of the files themselves become `InvalidSourceError`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    check_config(source, trust_remote_code)
    with as_invalid(source):
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code, **kwargs)
    adapter = adapter_for(config.model_type, source.spec)
    with as_invalid(source):
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=source.format != "pytorch",
            **kwargs,
        )
    model.to(dev).eval()
    info = model_info(source, model, config, adapter, torch_dtype)
    return LoadedModel(model, tokenizer, adapter, info, dev, time.perf_counter() - start)


def check_config(source: ResolvedSource, trust_remote_code: bool) -> None:
    """Read config.json before transformers does: refuse a model class that lives in the repo's own
    Python files unless trusted, and a model type without an adapter (transformers would report a
    type it does not know as a broken checkpoint).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config_file = source.path / "config.json"
    if source.gguf_file or not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSourceError(source.spec, f"config.json is not valid JSON ({exc}).") from exc
    model_type = str(config.get("model_type"))
    if "auto_map" in config and model_type not in CONFIG_MAPPING_NAMES:
        if not trust_remote_code:
            raise InvalidSourceError(source.spec, "this model needs remote code from its repo; review it, then pass --trust-remote-code.")
        return  # the repo's code defines the type; its adapter is looked up once the config is built
    adapter_for(model_type, source.spec)


@contextmanager
def as_invalid(source: ResolvedSource) -> Iterator[None]:
    """Turn errors raised while reading the files into one `InvalidSourceError` line."""
    try:
        yield
    except SuperweightsError:
        raise
    except Exception as exc:  # transformers, safetensors and gguf raise many types for bad files
        raise InvalidSourceError(source.spec, _problem(exc)) from exc


def _problem(exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, pickle.UnpicklingError) and first.startswith("Weights only load failed"):
        # torch's own advice here is to retry with weights_only=False: the one thing not to do
        return ("its pickle weights hold objects other than tensors, which can run code when loaded; "
                "weights_only=True refused them. Use safetensors weights from a source you trust.")
    return f"cannot load the checkpoint ({first[:200]}); the file may be truncated or corrupt: download it again."


def card_metadata(path) -> dict:
    """license, base_model and tags from a checkpoint's model card (README.md front matter), if any."""
    from huggingface_hub import ModelCard

    card_file = path / "README.md"
    if not card_file.is_file():
        return {}
    try:
        data = ModelCard.load(card_file).data
    except Exception:  # a malformed card is not a reason to refuse the weights
        return {}
    base = data.base_model[0] if isinstance(data.base_model, list) and data.base_model else data.base_model
    return {"license": data.license, "base_model": base, "tags": list(data.tags or [])}


def model_info(source: ResolvedSource, model: nn.Module, config, adapter: Adapter, dtype: torch.dtype) -> ModelInfo:
    card = card_metadata(source.path) if not source.gguf_file else {}
    names = [source.repo_id, card.get("base_model"), source.gguf_file, getattr(config, "_name_or_path", None), source.path.name]
    return ModelInfo(
        source=source.spec,
        repo_id=source.repo_id,
        revision=source.revision,
        architecture=(getattr(config, "architectures", None) or [type(model).__name__])[0],
        model_type=config.model_type,
        family=family_name(names, adapter.family),
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=_intermediate_size(config),
        num_parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(dtype).removeprefix("torch."),
        format=source.format,
        quantization=_gguf_quantization(source.gguf_file),
        **card,
    )


def _intermediate_size(config) -> int:
    for name in ("intermediate_size", "ffn_dim", "n_inner", "moe_intermediate_size"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return 4 * config.hidden_size  # GPT-2, BLOOM, Falcon: the 4x MLP


def _gguf_quantization(gguf_file: str | None) -> str | None:
    if not gguf_file:
        return None
    match = GGUF_QUANT.search(gguf_file.removesuffix(".gguf").split("-")[-1]) or GGUF_QUANT.search(gguf_file)
    return match.group(1).upper() if match else "gguf"
