"""A model loaded by this package's readers against the one transformers loads from the same files."""

from __future__ import annotations

import torch


def assert_same_model(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Every tensor equal (dtype included), tied where the reference is, nothing left on the meta
    device, the same logits."""
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    for name, tensor in reference.items():
        assert mine[name].dtype == tensor.dtype and torch.equal(mine[name], tensor), name
    assert tied_pairs(ours) == tied_pairs(theirs)
    assert not any(p.is_meta for p in ours.parameters()) and not any(b.is_meta for b in ours.buffers())
    high = min(96, theirs.get_input_embeddings().num_embeddings)
    ids = torch.randint(3, high, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(ours(input_ids=ids, use_cache=False).logits, theirs(input_ids=ids, use_cache=False).logits)


def tied(model: torch.nn.Module) -> bool:
    """Whether the head is the input embedding."""
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def tied_pairs(model: torch.nn.Module) -> set[tuple[str, str]]:
    """Every two parameter names that share one parameter."""
    named = list(model.named_parameters(remove_duplicate=False))
    return {(a, b) for a, p in named for b, q in named if a < b and p is q}
