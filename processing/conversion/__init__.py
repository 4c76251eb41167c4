"""Checkpoint conversion between MiniMind-V and Hugging Face checkpoints: safetensors folder I/O
(safetensors_io.py), the Qwen3 decoder (qwen3.py), CLIP/SigLIP vision towers (vision.py), the MiniMind-V assembly
of the two (assembly.py), and how the CLIs report (quiet.py); the key layout they map to is processing/layout.py.
This package imports nothing by itself."""
