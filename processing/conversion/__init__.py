"""Checkpoint conversion between MiniMind-V and Hugging Face checkpoints: safetensors folder I/O
(safetensors_io.py), where MiniMind-V keeps its parts (layout.py), the Qwen3 decoder (qwen3.py), CLIP/SigLIP vision
towers (vision.py) and the MiniMind-V assembly of the two (assembly.py). This package imports nothing by itself."""
