"""The X-Portrait 2 (X-NeMo) engine: plain PyTorch, no ComfyUI."""
