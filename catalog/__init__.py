"""superweight-catalog's domain core: find super weights in an LLM and check what they do.

Yu et al., "The Super Weight in Large Language Models" (2024): a single scalar of an MLP
down-projection produces a huge "super activation"; zeroing it alone can wreck the model.
"""

__version__ = "0.1.0"
