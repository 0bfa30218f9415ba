"""Temporary changes to modules that always come off: hooks registered (`hooked`), forwards
replaced (`forwards_replaced`) and a library's attribute replaced (`replaced`). Every hook and
patched forward of the scanner goes through these, so none can outlive the pass it was made for
(TransformerLens's `HookedRootModule.hooks()` shape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def hooked(hooks: Iterable[tuple[nn.Module, Callable]], *, pre: bool = False, with_kwargs: bool = False) -> Iterator[None]:
    """Each (module, hook) registered as a forward hook (`pre`: a forward pre-hook) until exit.

    Every one is removed however the block is left: a hook left behind would change every later
    pass of the model, silently.
    """
    handles = []
    try:
        for module, hook in hooks:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def forwards_replaced(replacements: Iterable[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Each module's `forward` replaced by its function until exit (an instance attribute, which a
    module's `__call__` finds first); on exit the class's forward shows again."""
    patched = []
    try:
        for module, forward in replacements:
            module.forward = forward
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


@contextmanager
def replaced(owner: object, name: str, value: object) -> Iterator[None]:
    """`owner.name` is `value` until exit, then what it was: for a library function that its callers
    look up at call time (`catalog.gguf_load` hands transformers a config it would parse again)."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
