"""The Llama decoder family (LlamaForCausalLM: Llama 2/3 shapes, SmolLM2, TinyLlama, ...): which Llama configs
MiniMind reproduces, Llama config <-> MiniMind decoder fields (a MiniMind decoder without QK-norm is the Llama
architecture), and the export of such a decoder as a plain transformers ``LlamaForCausalLM`` folder. The key mapping
and the export itself are shared with Qwen3 (decoder.py).

Supported: default RoPE (any `rope_theta`), any `head_dim`, GQA, tied or untied head, `attention_bias` (MiniMind,
like Llama, biases q/k/v/o alike). Refused with a named error: RoPE scaling (`llama3`, `linear`, `dynamic`, `yarn`,
...), `mlp_bias`, sliding windows, quantized checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .decoder import (
    DecoderFamily, check_unsupported_features, convert_minimind_v_to_decoder, export_decoder, moe_of, rope_theta_of,
    shared_decoder_fields, shared_export_fields,
)
from .safetensors_io import CheckpointError, read_json


def check_llama_config(llama_dir: str | os.PathLike) -> dict:
    """Read `llama_dir/config.json` and refuse what MiniMind cannot reproduce; returns the raw dict."""
    config_path = Path(llama_dir) / "config.json"
    raw = read_json(config_path)
    if raw.get("model_type") != "llama":
        raise CheckpointError(f"{config_path} has model_type {raw.get('model_type')!r}; expected 'llama'")
    check_unsupported_features(raw, config_path)
    if raw.get("mlp_bias"):
        raise CheckpointError(f"{config_path} sets mlp_bias=true; MiniMind's feed-forward has no biases")
    return raw


def llama_decoder_fields(llama_dir: str | os.PathLike) -> dict:
    """MiniMindVConfig decoder fields equivalent to `llama_dir/config.json` (qk_norm off: the Llama architecture).

    RoPE comes from the raw JSON (either layout); every other field from transformers' `LlamaConfig`, so absent
    fields take the defaults `LlamaForCausalLM.from_pretrained` would use (`head_dim` hidden/heads, untied head).
    """
    raw = check_llama_config(llama_dir)
    config_path = Path(llama_dir) / "config.json"
    try:
        lcfg = LlamaConfig.from_dict(raw)
    except Exception as error:  # transformers validation raises several types
        raise CheckpointError(f"{config_path} is not a valid Llama config: {error}") from error
    fields = shared_decoder_fields(lcfg, rope_theta_of(raw, lcfg, config_path))
    fields["qk_norm"] = False
    return fields


def require_llama_equivalent(text: dict) -> None:
    """Refuse MiniMind decoder fields (raw or from a config) without a Llama equivalent."""
    if moe_of(text):
        raise CheckpointError("the model uses a mixture-of-experts decoder, which has no dense Llama equivalent")
    if text.get("qk_norm", True):  # MiniMindConfig's default: qk_norm True
        raise CheckpointError("the model has qk_norm=True; Llama has no q_norm/k_norm (export it as Qwen3: "
                              "--format qwen3)")


def llama_config_from_minimind(text, tied: bool, dtype: torch.dtype | None = None) -> LlamaConfig:
    """The transformers `LlamaConfig` of a dense MiniMind decoder config `text` without QK-norm."""
    fields = dict(shared_export_fields(text, tied), mlp_bias=False, pretraining_tp=1,
                  architectures=["LlamaForCausalLM"])
    if dtype is not None:
        fields["dtype"] = dtype
    return LlamaConfig(**fields)


LLAMA = DecoderFamily(
    name="llama", model_type="llama", decoder_fields=llama_decoder_fields, require_equivalent=require_llama_equivalent,
    export_config=llama_config_from_minimind, model_class=LlamaForCausalLM,
)


def export_llama(model_dir: str | os.PathLike, dtype: str | torch.dtype | None = None):
    """Stream the decoder of a saved MiniMind-V folder into a transformers `LlamaForCausalLM`.

    Returns (model in eval mode, tokenizer or None). `dtype` None keeps the stored dtype of the embeddings.
    """
    return export_decoder(model_dir, LLAMA, dtype)


def convert_minimind_v_to_llama(model_dir, output_dir, dtype=None, overwrite: bool = False) -> Path:
    """`export_llama` + save a plain Llama folder (config, weights, generation config, tokenizer) atomically."""
    return convert_minimind_v_to_decoder(model_dir, output_dir, LLAMA, dtype, overwrite)


__all__ = [
    "LLAMA", "check_llama_config", "convert_minimind_v_to_llama", "export_llama", "llama_config_from_minimind",
    "llama_decoder_fields", "require_llama_equivalent",
]
