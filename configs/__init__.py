"""The model presets, as JSON (tiny, small, base, moe, qwen3-0.6b), and Accelerate launch configs.

setup.py installs this folder as the `minimind_v_configs` package, so `MiniMindVConfig.from_preset(name)` finds the
presets after a plain `pip install .` as well as in an editable checkout.
"""
