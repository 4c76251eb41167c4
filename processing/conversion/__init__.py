"""Checkpoint conversion between MiniMind-V and Hugging Face checkpoints: safetensors folder I/O
(safetensors_io.py), the decoder families (decoder.py shared, qwen3.py, llama.py, the decoders.py registry),
CLIP/SigLIP vision towers (vision.py), the MiniMind-V assembly of the two (assembly.py), GGUF files (gguf.py), random
checkpoints to try it all offline (random_checkpoints.py), and how the CLIs report (quiet.py); the key layout they
map to is processing/layout.py. This package imports nothing by itself."""
