"""Human family names (Llama 2, Qwen2.5, Gemma 3, SmolLM2...) from a model's name and base model.

The first pattern that matches the repo id, declared base model or GGUF file name wins; a model
that matches none falls back to its architecture's family (`Adapter.family`).
"""

from __future__ import annotations

import re

FAMILIES: tuple[tuple[str, str], ...] = (
    (r"smollm2", "SmolLM2"),
    (r"smollm3", "SmolLM3"),
    (r"smollm", "SmolLM"),
    (r"llama[-_ ]?2", "Llama 2"),
    (r"llama[-_ ]?3", "Llama 3"),
    (r"llama[-_ ]?4", "Llama 4"),
    (r"qwen2\.5", "Qwen2.5"),
    (r"qwen3", "Qwen3"),
    (r"qwen2", "Qwen2"),
    (r"gemma[-_ ]?3", "Gemma 3"),
    (r"gemma[-_ ]?2", "Gemma 2"),
    (r"gemma", "Gemma"),
    (r"mixtral", "Mixtral"),
    (r"mistral", "Mistral"),
    (r"phi[-_ ]?3", "Phi-3"),
    (r"olmo[-_ ]?2", "OLMo 2"),
    (r"olmo", "OLMo"),
    (r"pythia", "Pythia"),
    (r"falcon", "Falcon"),
    (r"bloom", "BLOOM"),
    (r"opt-\d", "OPT"),
    (r"gpt2|gpt-2", "GPT-2"),
)


def family_name(names: list[str | None], fallback: str) -> str:
    """The family of the first name that matches a known pattern, else `fallback`."""
    for name in filter(None, names):
        for pattern, family in FAMILIES:
            if re.search(pattern, name, re.IGNORECASE):
                return family
    return fallback
