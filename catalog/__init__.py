"""superweight-catalog's domain core: find super weights in an LLM and check what they do.

Yu et al., "The Super Weight in Large Language Models" (2024): a single scalar of an MLP
down-projection produces a huge "super activation"; zeroing it alone can wreck the model.

    from catalog import scan, ScanOptions
    result = scan("HuggingFaceTB/SmolLM2-135M-Instruct", ScanOptions(device="cpu"))
    result = scan(model, ScanOptions(), tokenizer=tokenizer)   # a model already in memory

`scan` imports torch and transformers when first used, so `import catalog` stays light.
"""

from catalog.config import ScanOptions, SpikeRule, VerifyOptions

__version__ = "0.1.0"
__all__ = ["ScanOptions", "SpikeRule", "VerifyOptions", "scan"]


def __getattr__(name: str):
    if name == "scan":
        from catalog.scanner import scan

        return scan
    raise AttributeError(f"module 'catalog' has no attribute {name!r}")
