"""agff-deploy core: the AGFF-Embed model, its config, prompts, fused similarity and formats."""
