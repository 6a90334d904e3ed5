"""agff-deploy core: the AGFF-Embed model, its config, prompts, fused similarity and formats."""

__version__ = "0.1.0"
