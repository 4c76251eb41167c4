"""Checkpoint conversion between MiniMind-V and Hugging Face checkpoints: safetensors folder I/O
(safetensors_io.py), where MiniMind-V keeps its parts (layout.py), the Qwen3 decoder (qwen3.py), CLIP/SigLIP vision
towers (vision.py), the MiniMind-V assembly of the two (assembly.py), and how the CLIs report (quiet.py). This
package imports nothing by itself."""
