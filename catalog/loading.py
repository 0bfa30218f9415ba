"""Load a resolved source once, in the requested dtype and device, with its tokenizer, and find its down projections."""

from __future__ import annotations

import json
import pickle
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from catalog.architectures import Architecture, discover, family_of
from catalog.errors import BadOptionError, InvalidSourceError, SuperweightsError, UnsupportedArchitectureError, first_line, memory_shortage
from catalog.family import family_name
from catalog.gguf_load import gguf_config, parsed_once, read_tensors
from catalog.gguf_meta import BigEndianError, Header, read_model_header, split_field
from catalog.identity import Identity, checkpoint_identity, gguf_identity
from catalog.reader import ShardReader, Span, index_shards
from catalog.result import ModelInfo
from catalog.sources import ResolvedSource

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    architecture: Architecture
    info: ModelInfo
    device: torch.device
    load_seconds: float
    loader: str = "transformers"  # or "parallel": `catalog.reader` put the checkpoint's tensors in place
    gguf: GGUFFile | None = None  # the GGUF file as parsed for the load (`loader` "gguf")

    @property
    def context(self) -> int | None:
        """The positions the model was made for, which its inputs must fit (None: not stated, e.g.
        ALiBi, or no limit: XLNet's config says -1). GPT-2's `n_positions` answers to this name too."""
        positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return positions if isinstance(positions, int) and positions > 0 else None

    @property
    def vocabulary(self) -> int:
        """Rows of the input embedding: every token id fed to the model must be below it."""
        return self.model.get_input_embeddings().num_embeddings


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadOptionError("--device", f"{device!r} asked for but no CUDA GPU is visible; use --device cpu.")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 where the device multiplies it in hardware (`native_bfloat16`), else float32."""
    if dtype == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    if dtype not in DTYPES:
        raise BadOptionError("--dtype", f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run in hardware: on a GPU, and on a CPU with AMX or AVX512-BF16.

    There bfloat16 is what a GPU scan computes in, and the faster dtype: SmolLM2's scan on this
    project's 2-core Xeon (AMX) verifies in 6.1 s against float32's 18.9 s, same verdicts. A CPU
    without them emulates bfloat16, slower than float32, so it stays in float32.
    """
    if device.type != "cpu":
        return True
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


@dataclass
class Opened:
    """What a load needs before the weights: device, dtype, config and tokenizer."""

    device: torch.device
    dtype: torch.dtype
    config: object
    tokenizer: object
    gguf: GGUFFile | None = None  # a GGUF file `read_gguf` can load itself


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    header: Header
    config: dict[str, object]  # as `load_gguf_checkpoint` gives it (`catalog.gguf_load.gguf_config`)


def open_source(source: ResolvedSource, device: str, dtype: str, trust_remote_code: bool) -> Opened:
    """Check and read everything but the weights (`load`, and `catalog.streaming`)."""
    from transformers import AutoConfig, AutoTokenizer

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    check_config(source, trust_remote_code)
    with as_invalid(source):
        gguf = gguf_file(source)
    with parsed_once(gguf.path, gguf.config) if gguf else nullcontext():
        with as_invalid(source):
            config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code, **kwargs)
        with as_invalid(source, _tokenizer_problem):
            tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code, **kwargs)
    return Opened(dev, torch_dtype, config, tokenizer, gguf)


def gguf_file(source: ResolvedSource) -> GGUFFile | None:
    """The source's GGUF file parsed once (of a split model: every part), or None (not GGUF, or an
    architecture left to transformers)."""
    if not source.gguf_file:
        return None
    path = source.path / source.gguf_file
    header = read_model_header(path)
    config = gguf_config(header)
    if config is None and (parts := split_field(header, "split.count", path)) > 1:
        raise InvalidSourceError(source.spec, _left_to_transformers(path.name, header.architecture, parts))
    return GGUFFile(path, header, config) if config is not None else None


def _left_to_transformers(first: str, architecture: str, parts: int) -> str:
    """Why a split GGUF of an architecture that transformers reads itself cannot be scanned."""
    return (f"{first} is part 1 of a GGUF split into {parts} files, and transformers, which reads {architecture or 'this'} "
            f"models' GGUF files, reads one file: merge the parts with llama.cpp (`llama-gguf-split --merge {first} "
            "merged.gguf`), then scan merged.gguf.")


def _missing_weights(missing: list[str]) -> str:
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return (f"the checkpoint lacks weights of the model ({missing[0]}{more}), which transformers would fill with "
            "random values: a scan of them would catalog noise. Scan the complete checkpoint (all of its files).")


def load(source: ResolvedSource, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """Read the checkpoint once. Failures of the files themselves become `InvalidSourceError`."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    opened = open_source(source, device, dtype, trust_remote_code)
    with as_invalid(source):
        model, loader = read_directly(source, opened, trust_remote_code)
        if model is None:
            model, info = AutoModelForCausalLM.from_pretrained(
                source.path,
                dtype=opened.dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=source.format != "pytorch",
                output_loading_info=True,
                **({"gguf_file": source.gguf_file} if source.gguf_file else {}),
            )
            if missing := sorted(info.get("missing_keys") or ()):
                raise InvalidSourceError(source.spec, _missing_weights(missing))
            model = model.to(opened.device)
    model.eval()
    architecture = discover(model, opened.config, source.spec)
    info = model_info(source, model, opened.config, opened.dtype, architecture, opened.gguf.header if opened.gguf else None)
    return LoadedModel(model, opened.tokenizer, architecture, info, opened.device, time.perf_counter() - start, loader,
                       opened.gguf if loader == "gguf" else None)


def in_memory(model: nn.Module, tokenizer, name: str) -> LoadedModel:
    """A model and tokenizer the caller already holds (a notebook's model), taken where they are: its
    device and dtype. The scan changes its weights only for a condition and puts them back."""
    start = time.perf_counter()
    weight = next(model.parameters())
    checkpoint = Path(getattr(model.config, "_name_or_path", "") or name)  # where its model card may be
    source = ResolvedSource(name, checkpoint, "in-memory")
    model.eval()
    architecture = discover(model, model.config, name)
    info = model_info(source, model, model.config, weight.dtype, architecture)
    return LoadedModel(model, tokenizer, architecture, info, weight.device, time.perf_counter() - start, "in-memory")


def skeleton(config, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """The model without weights: parameters on the meta device, buffers made on the host.

    Initialisation is skipped for the meta parameters (a 7B's 227 `normal_` calls on meta tensors
    took 0.07 of the skeleton's 0.1 s) and run for the rest: transformers' `_init_weights` computes
    buffers (rotary frequencies, position ids), which `from_pretrained` relies on too.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with init_empty_weights(), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    for param in model.parameters():
        if param.is_meta:
            param._is_hf_initialized = True  # transformers' init functions pass over flagged tensors
    model.initialize_weights()
    model.tie_weights()  # tied weights become one parameter, as from_pretrained leaves them
    return model.eval()


def assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Give parameter or buffer `name` new contents. A parameter keeps its Python object: tied
    weights share it, and detection sites and conditions hold references to it."""
    module, attr = _owner(model, name)
    if attr in module._parameters:
        torch.utils.swap_tensors(module._parameters[attr], nn.Parameter(tensor, requires_grad=False))
    else:
        module._buffers[attr] = tensor


def read_directly(source: ResolvedSource, opened: Opened, trust_remote_code: bool) -> tuple[nn.Module | None, str]:
    """(the model read by this package's own readers, or None, and which loader that is)."""
    if source.format == "safetensors":
        model = read_parallel(source, opened.config, opened.device, opened.dtype, trust_remote_code)
        return model, "parallel" if model is not None else "transformers"
    if opened.gguf is not None:
        model = read_gguf(opened.gguf, opened.config, opened.device, opened.dtype, trust_remote_code)
        return model, "gguf" if model is not None else "transformers"
    return None, "transformers"


def read_gguf(gguf: GGUFFile, config, device: torch.device, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module | None:
    """The model with the file's tensors dequantized straight onto the device (`catalog.gguf_load`),
    or None where they do not fill it exactly (`checkpoint_names`)."""
    model = skeleton(config, dtype, trust_remote_code)
    tensors = read_tensors(gguf.header, gguf.config, model, device, dtype)
    names = checkpoint_names(model, tensors)
    if names is None:
        return None
    place(model, names, tensors)
    buffers_to(model, device)
    return model


def read_parallel(source: ResolvedSource, config, device: torch.device, dtype: torch.dtype,
                  trust_remote_code: bool) -> nn.Module | None:
    """The model with its weights read by `catalog.reader` (several threads, straight onto the
    device), or None where transformers must convert the checkpoint (`checkpoint_names`). The read
    comes after the config, the tokenizer and the skeleton, not alongside them: they hold the GIL
    that the reader's workers take back after each chunk, and overlapped the load was slower than
    the same steps one after another (benchmarks/README.md, issue 16)."""
    model = skeleton(config, dtype, trust_remote_code)
    spans = index_shards(source.weight_files())
    if not getattr(model.config, "quantization_config", None):  # quantized tensors are stored packed
        check_shapes(source, model, spans)
    names = checkpoint_names(model, spans)
    if names is None:
        return None
    with ShardReader(spans, device, dtype=dtype) as reader:
        place(model, names, reader.read(names))
    buffers_to(model, device)
    return model


def check_shapes(source: ResolvedSource, model: nn.Module, spans: dict[str, Span]) -> None:
    """A checkpoint tensor whose shape is not the one config.json makes: the config is wrong, not the file."""
    state = model.state_dict(keep_vars=True)
    for name, span in spans.items():
        if name in state and span.shape != tuple(state[name].shape):
            raise InvalidSourceError(source.spec, f"config.json does not match the weights: {name} is {list(span.shape)} in the "
                                                  f"checkpoint but {list(state[name].shape)} by config.json; use the config.json "
                                                  "that came with these weights.")


def place(model: nn.Module, names: dict[str, list[str]], tensors: dict[str, torch.Tensor]) -> None:
    """Each checkpoint tensor into every state-dict name it fills (`checkpoint_names`); then tied
    weights the checkpoint holds under both names are tied again where equal (`tie_equal`)."""
    for name, tensor in tensors.items():
        for alias in names[name]:
            assign(model, alias, tensor)
    tie_equal(model, set(tensors))


def tie_equal(model: nn.Module, placed: set[str]) -> None:
    """A tied pair (transformers' `all_tied_weights_keys`) placed under both its names, as
    transformers' `tie_weights` leaves it: one parameter where the two are equal (a `.bin` file's
    shared storage, the copy of BLOOM's embedding llama.cpp writes as its output), apart and no
    longer tied where they differ (the config ties what the checkpoint does not)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target, source in list(tied.items()):
        if target in placed and source in placed:
            kept, other = model.get_parameter(source), model.get_parameter(target)
            if kept is other:
                continue
            if torch.equal(kept, other):
                module, attr = _owner(model, target)
                module._parameters[attr] = kept
            else:
                del tied[target]


def buffers_to(model: nn.Module, device: torch.device) -> None:
    """The buffers the model computed itself in the skeleton (rotary frequencies, masks), onto the device."""
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)


def checkpoint_names(model: nn.Module, spans: Mapping[str, Span | torch.Tensor]) -> dict[str, list[str]] | None:
    """Checkpoint name -> the state-dict names it fills (tied weights: several), or None unless
    every checkpoint tensor fills the model's tensors of its name and shape, and every one is
    filled, by tensors put in place as they are (not quantized, not kept in float32). A tied
    weight the checkpoint holds under two names is untied to be read under both: transformers
    keeps the two apart where they differ, and `place` ties them again where they do not."""
    if getattr(model.config, "quantization_config", None) or getattr(model, "_keep_in_fp32_modules", None):
        return None
    by_tensor: dict[int, list[str]] = {}
    state = model.state_dict(keep_vars=True)
    for name, tensor in state.items():
        by_tensor.setdefault(id(tensor), []).append(name)
    if not set(spans) <= set(state):
        return None
    names, apart = {}, []
    for aliases in by_tensor.values():
        stored = [a for a in aliases if a in spans]
        if not stored or any(spans[a].shape != tuple(state[a].shape) for a in stored):
            return None
        names[stored[0]] = [a for a in aliases if a not in stored[1:]]
        apart += stored[1:]
    for name in apart:
        untie(model, name)
        names[name] = [name]
    return names


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding state-dict entry `name`, and the entry's name in it."""
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name), attr


def untie(model: nn.Module, name: str) -> None:
    """Parameter `name` on its own, no longer shared with the weights tied to it (still on the meta device)."""
    module, attr = _owner(model, name)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(torch.empty_like(module._parameters[attr]), requires_grad=False)


def check_config(source: ResolvedSource, trust_remote_code: bool) -> None:
    """Read config.json before transformers does: refuse a model class that lives in the repo's own
    Python files unless trusted, and a model type the installed transformers does not know (it
    would report it as a broken checkpoint).
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
        return  # the repo's code defines the type
    if model_type not in CONFIG_MAPPING_NAMES:
        raise UnsupportedArchitectureError(source.spec, model_type, "the installed transformers does not know it; "
                                           "upgrade transformers, or pass --trust-remote-code for a repo's own code")


def _problem(source: ResolvedSource, exc: Exception) -> str:
    first = first_line(exc)
    if isinstance(exc, pickle.UnpicklingError) and first.startswith("Weights only load failed"):
        # torch's own advice here is to retry with weights_only=False: the one thing not to do
        return ("its pickle weights hold objects other than tensors, which can run code when loaded; "
                "weights_only=True refused them. Use safetensors weights from a source you trust.")
    if (missing := _missing_package(exc)) is not None:
        return f"cannot load the checkpoint: a package it needs is missing ({missing})"
    if isinstance(exc, BigEndianError):  # a whole file, with its own fix
        return f"cannot load the checkpoint: {first}"
    return f"cannot load the checkpoint ({first[:200]}); the file may be truncated or corrupt: download it again."


def _tokenizer_problem(source: ResolvedSource, exc: Exception) -> str:
    """A tokenizer that does not load is most often one that is not there: weights saved without
    `tokenizer.save_pretrained`, or a GGUF file converted without its vocabulary."""
    first = first_line(exc)[:200].rstrip(". ")
    if (missing := _missing_package(exc)) is not None:
        return f"cannot load its tokenizer: a package it needs is missing ({missing})"
    if "trust_remote_code=True" in str(exc):  # transformers' refusal of a tokenizer class in the repo's own Python
        return ("its tokenizer needs remote code from its repo (tokenizer_config.json's auto_map); "
                "review it, then pass --trust-remote-code.")
    if source.gguf_file:
        what, fix = ("the GGUF file holds no readable tokenizer that transformers can build (its tokenizer.ggml.* metadata)",
                     "scan the model's safetensors checkpoint, or a GGUF converted with its tokenizer (llama.cpp's "
                     "convert_hf_to_gguf.py writes it)")
    elif source.repo_id:
        what, fix = ("the repo's tokenizer files are missing or unreadable",
                     "scan a directory holding its weights and the tokenizer it was trained with")
    else:
        what, fix = ("the directory's tokenizer files are missing or unreadable",
                     "save that tokenizer beside the weights (`tokenizer.save_pretrained(DIR)`)")
    return f"cannot load its tokenizer ({first}). A scan tokenizes text with the model's own tokenizer, and {what}: {fix}."


def _missing_package(exc: Exception) -> str | None:
    """What this environment lacks to read files that are fine, in one line with its fix (None:
    nothing is missing). transformers' own message puts the `pip install` command, or the
    installation page, on the lines after the first, which a one-line error would cut off."""
    text = " ".join(str(exc).split())
    install = re.search(r"`(pip install [^`]+)`", text) or re.search(r"(pip install (?:-U )?[^\s`]+)", text)
    if not isinstance(exc, ImportError) and install is None:
        return None
    reason = re.split(r"(?<=\.) ", text, maxsplit=1)[0].rstrip(".:")[:200]
    page = re.search(r"https?://\S+", text)
    fix = install.group(1).rstrip(".,)") if install else page.group(0) if page else ""
    return f"{reason}: {fix}" if fix and fix not in reason else reason


@contextmanager
def as_invalid(source: ResolvedSource, problem: Callable[[ResolvedSource, Exception], str] = _problem) -> Iterator[None]:
    """Turn errors raised while reading the files into one `InvalidSourceError` line (`problem`
    says what went wrong; by default, the weights); running out of memory is not the files'
    fault, and is left to the scan to say (`catalog.scanner`)."""
    try:
        yield
    except SuperweightsError:
        raise
    except Exception as exc:  # transformers, safetensors and gguf raise many types for bad files
        if memory_shortage(exc):
            raise
        raise InvalidSourceError(source.spec, problem(source, exc)) from exc


def model_info(source: ResolvedSource, model: nn.Module, config, dtype: torch.dtype, architecture: Architecture,
               header: Header | None = None) -> ModelInfo:
    """What the catalog records of the model. Sizes come from the config, else (a config whose parts'
    configs name them, BLT's) from what discovery found: its blocks and down projections. `header`:
    a GGUF source's, as the load parsed it."""
    text = config.get_text_config()
    widths = architecture.sites[0].widths
    me = source_identity(source, config, header)
    names = [source.repo_id, me.base_model, me.basename, me.name, source.gguf_file, getattr(config, "_name_or_path", None),
             source.path.name]
    return ModelInfo(
        source=source.source or source.spec,
        repo_id=source.repo_id,
        revision=source.revision,
        architecture=(getattr(config, "architectures", None) or [type(model).__name__])[0],
        model_type=config.model_type,
        family=family_name(names, family_of(config)),
        num_layers=getattr(text, "num_hidden_layers", None) or architecture.num_layers,
        hidden_size=getattr(text, "hidden_size", None) or widths[1],
        intermediate_size=_intermediate_size(text, widths[0]),
        num_parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(dtype).removeprefix("torch."),
        format=source.format,
        quantization=me.quantization,
        license=me.license,
        base_model=me.base_model,
        tags=list(me.tags),
        name=me.name,
        named_from=me.named_from,
        organization=me.organization,
        size_label=me.size_label,
        fingerprint=source.fingerprint,
    )


def source_identity(source: ResolvedSource, config, header: Header | None = None) -> Identity:
    """What the files say the model is (`catalog.identity`)."""
    if source.gguf_file:
        return gguf_identity(source.path / source.gguf_file, source.repo_id, header.metadata if header else None)
    return checkpoint_identity(source.path, getattr(config, "_name_or_path", None), source.repo_id)


def _intermediate_size(config, down_input: int) -> int:
    """The width the config names (the first layer's where it names one per layer: Gemma 3n), else
    the first down projection's input (GPT-2, BLOOM, Falcon: 4x hidden)."""
    for name in ("intermediate_size", "ffn_dim", "n_inner", "moe_intermediate_size"):
        value = getattr(config, name, None)
        if value:
            return int(value[0] if isinstance(value, (list, tuple)) else value)
    return down_input
