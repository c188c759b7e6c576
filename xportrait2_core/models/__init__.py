"""The X-NeMo networks: motion encoder, denoising and reference UNets and their blocks."""
