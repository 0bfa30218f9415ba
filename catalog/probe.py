"""One tiny forward pass that shows how a model computes: which modules run, on what, in what order.

`catalog.architectures` reads the feed-forward output projections off this record instead of
off a list of names. The one behavioural question it asks of a module is whether it is
*token-wise*: called again on the last token alone, and on the whole prompt with the other
tokens' input negated, does it return the last token of what it returned? Feed-forward parts
(dense MLPs and routed experts alike) are; attention, state-space and convolution mixers are not.
A feed-forward part may also look one token back (RWKV's channel mix shifts the previous token's
input in): asked with the last two tokens kept, that one passes, and mixers that see further back
still do not.
The second call is what tells a mixer apart where the tokens' hidden states are all alike (a
massive activation that every token carries dominates them after the norm): the last token
alone then gets what the mix of alike tokens gave it. Positions are counted as the decoder blocks
see them (`Probe.align`): a model may prepend positions of its own (CPM-Ant's 32 prompt positions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from catalog.patches import hooked

PROBE_TOKENS = 7  # a length no width in a real or tiny model equals, so token dimensions are recognisable


@dataclass
class Call:
    """A module's first call in the probe: its arguments, its output, and when it returned."""

    args: tuple
    kwargs: dict
    output: Any
    order: int
    views: tuple[tuple[int, str, int], ...] = ()  # `own_views` of the call (its copies are views of nothing)

    @property
    def out(self) -> torch.Tensor | None:
        """The output tensor (the first element where a module returns a tuple)."""
        return first_tensor(self.output)

    @property
    def input(self) -> torch.Tensor | None:
        return first_tensor(self.args) if self.args else first_tensor(tuple(self.kwargs.values()))


@dataclass
class Probe:
    """The first call of every module that ran, by module identity."""

    calls: dict[int, Call] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)  # calls per module
    positions: int = PROBE_TOKENS  # the sequence length the blocks run on
    _token_wise: dict[tuple[int, int], bool] = field(default_factory=dict)
    _answers: dict[tuple[str, int], Any] = field(default_factory=dict)

    def call(self, module: nn.Module) -> Call | None:
        return self.calls.get(id(module))

    def answer(self, question: str, module: nn.Module, compute: Callable[[], Any]) -> Any:
        """`compute()` for (question, module), computed once: a behavioural test calls modules again,
        which a streamed block can do only while its weights are read (`streaming.probe_blocks`)."""
        key = (question, id(module))
        if key not in self._answers:
            self._answers[key] = compute()
        return self._answers[key]

    def token_wise(self, module: nn.Module, look_back: int = 0) -> bool:
        """Whether `module` computes each token from that token alone, or with the `look_back`
        tokens before it (memoised)."""
        key = (id(module), look_back)
        if key not in self._token_wise:
            call = self.calls.get(id(module))
            self._token_wise[key] = call is not None and _same_on_last_token(module, call, self.positions, 1 + look_back)
        return self._token_wise[key]

    def align(self, block: nn.Module, hidden: int) -> None:
        """Count positions as `block`'s hidden states have them (`_positions`)."""
        positions = _positions(self.calls.get(id(block)), hidden)
        if positions != self.positions:
            self.positions = positions
            self._token_wise.clear()


def _positions(call: Call | None, hidden: int) -> int:
    """The positions of a block's hidden states `(1, positions, ..., hidden)`: the prompt's tokens,
    unless the model prepends positions of its own (then they do not carry the prompt's length)."""
    x = call.input if call else None
    if x is None or x.dim() < 3 or x.shape[0] != 1 or x.shape[-1] != hidden or _token_dim(x, PROBE_TOKENS) is not None:
        return PROBE_TOKENS
    return x.shape[1]


def first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((t for t in map(first_tensor, value) if t is not None), None)
    if isinstance(value, dict):
        return first_tensor(tuple(value.values()))  # transformers' ModelOutput is a dict
    return None


def own_views(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple[int, str, int], ...]:
    """The arguments that are views of one of the module's own parameters, not the parameter itself
    (DBRX's experts get a slice of their stacked weight per call): (position among the args, then the
    kwargs' values; the parameter's name; the view's offset into it, in elements)."""
    params = {_storage(p): (name, p) for name, p in module.named_parameters(recurse=False)}
    params.pop(None, None)
    found = []
    for position, value in enumerate((*args, *kwargs.values())):
        if not isinstance(value, torch.Tensor):
            continue
        name, param = params.get(_storage(value), (None, None))
        if param is not None and value is not param:
            found.append((position, name, value.storage_offset() - param.storage_offset()))
    return tuple(found)


def _storage(t: torch.Tensor) -> int | None:
    """Where a tensor's memory starts, or None where it has none to compare (meta, empty, or a tensor
    subclass without a storage of its own, as some quantized weights are)."""
    if t.device.type == "meta" or not t.numel():
        return None
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def probe_ids(vocab_size: int, device: torch.device) -> torch.Tensor:
    """(1, PROBE_TOKENS) ids spread over the vocabulary (low ids are often special tokens)."""
    step = max(1, vocab_size // (PROBE_TOKENS + 1))
    return (torch.arange(1, PROBE_TOKENS + 1) * step % vocab_size).unsqueeze(0).to(device)


@contextmanager
def recording(modules: list[nn.Module]) -> Iterator[Probe]:
    """Record the first call of each module while the block is in effect; hooks always come off."""
    probe = Probe()

    def hook(module, args, kwargs, output):
        probe.counts[id(module)] = probe.counts.get(id(module), 0) + 1
        if id(module) not in probe.calls:  # copies: models add to tensors in place after a call
            copied = _map_tensors((args, kwargs, output), lambda t: t.detach().clone())
            probe.calls[id(module)] = Call(*copied, order=len(probe.calls), views=own_views(module, args, kwargs))

    with hooked(((m, hook) for m in modules), with_kwargs=True):
        yield probe


def run(model: nn.Module, modules: list[nn.Module], vocab_size: int) -> Probe:
    """Forward the probe prompt (text only: a multimodal model runs its language model alone)."""
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    with recording(modules) as probe, torch.no_grad():
        model(input_ids=probe_ids(vocab_size, device), use_cache=False)
    return probe


def _token_dim(t: torch.Tensor, positions: int) -> int | None:
    """The position dimension of a probe tensor, (1, positions, ...) or (positions, ...), if any."""
    if t.dim() >= 2 and t.shape[0] == 1 and t.shape[1] == positions:
        return 1
    if t.dim() >= 1 and t.shape[0] == positions:
        return 0
    return None


def _map_tensors(value: Any, fn) -> Any:
    """`fn` applied to every tensor of an argument structure."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return (tuple if isinstance(value, tuple) else list)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _last_tokens(value: Any, positions: int, kept: int = 1) -> Any:
    """The last `kept` positions of every position-indexed tensor in an argument structure."""
    def last(t: torch.Tensor) -> torch.Tensor:
        dim = _token_dim(t, positions)
        return t if dim is None else t.narrow(dim, positions - kept, kept)
    return _map_tensors(value, last)


def _context_negated(call: Call, positions: int, kept: int) -> list[tuple[tuple, dict, int]]:
    """The call's arguments with its input negated at every position but the last `kept`, and their
    positions (none where the input is not a position-indexed float tensor)."""
    x = call.input
    dim = _token_dim(x, positions) if x is not None and x.is_floating_point() else None
    if dim is None:
        return []
    changed = x.clone()
    changed.narrow(dim, 0, positions - kept).neg_()

    def swap(t: torch.Tensor) -> torch.Tensor:
        return changed if t is x else t
    return [(_map_tensors(call.args, swap), _map_tensors(call.kwargs, swap), positions)]


def _same_on_last_token(module: nn.Module, call: Call, positions: int, kept: int) -> bool:
    """Called on the last `kept` tokens alone, and on the prompt with the others negated, the module
    returns at the last token what it returned there."""
    full = call.out
    if full is None or full.numel() == 0:
        return False
    expected = _last_tokens(full, positions)
    calls = [(_last_tokens(call.args, positions, kept), _last_tokens(call.kwargs, positions, kept), kept),
             *_context_negated(call, positions, kept)]
    return all(_returns_last(module, args, kwargs, expected, n) for args, kwargs, n in calls)


def _returns_last(module: nn.Module, args: tuple, kwargs: dict, expected: torch.Tensor, positions: int) -> bool:
    """Called on `args` (of `positions` positions), the module returns `expected` at the last token."""
    try:
        with torch.no_grad():
            out = first_tensor(module(*args, **kwargs))
    except Exception:  # a mixer called on one token with the whole prompt's masks: not token-wise
        return False
    last = _last_tokens(out, positions) if out is not None else None
    if last is None or last.shape != expected.shape:
        return False
    scale = expected.abs().max().float().item() or 1.0
    return bool(((last.float() - expected.float()).abs().max() <= 1e-3 * scale + 1e-6).item())
