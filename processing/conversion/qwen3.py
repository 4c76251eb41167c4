"""The Qwen3 decoder family: which Qwen3 configs MiniMind reproduces, Qwen3 config <-> MiniMind decoder fields, and
the export of a MiniMind-V decoder as a plain transformers ``Qwen3ForCausalLM`` folder (``scripts/export_qwen3.py``
with a QK-normed decoder). The key mapping and the export itself are shared with Llama (decoder.py).

Only dense decoders with QK-norm have a Qwen3 equivalent.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from .decoder import (
    HF_DECODER_PREFIX, DecoderFamily, check_minimind_v_config, check_unsupported_features,
    convert_minimind_v_to_decoder, decoder_export_mapping, decoder_import_mapping, export_decoder, moe_of,
    preflight_export, rope_theta_of, shared_decoder_fields, shared_export_fields,
)
from .safetensors_io import CheckpointError, read_json

QWEN3_PREFIX = HF_DECODER_PREFIX  # where Qwen3ForCausalLM keeps its decoder


def check_qwen3_config(qwen3_dir: str | os.PathLike) -> dict:
    """Read `qwen3_dir/config.json` and refuse what MiniMind cannot reproduce; returns the raw dict.

    Reads the JSON itself because transformers 4 writes top-level `rope_theta`/`rope_scaling` and transformers 5
    writes `rope_parameters`; both layouts are checked.
    """
    config_path = Path(qwen3_dir) / "config.json"
    raw = read_json(config_path)
    if raw.get("model_type") != "qwen3":
        raise CheckpointError(f"{config_path} has model_type {raw.get('model_type')!r}; expected 'qwen3' (dense)")
    check_unsupported_features(raw, config_path)
    return raw


def qwen3_decoder_fields(qwen3_dir: str | os.PathLike) -> dict:
    """MiniMindVConfig decoder fields equivalent to `qwen3_dir/config.json`.

    RoPE comes from the raw JSON (either layout); every other field from transformers' `Qwen3Config`, so absent
    fields take the defaults `Qwen3ForCausalLM.from_pretrained` would use (e.g. `head_dim` 128, not hidden/heads).
    """
    raw = check_qwen3_config(qwen3_dir)
    config_path = Path(qwen3_dir) / "config.json"
    try:
        qcfg = Qwen3Config.from_dict(raw)
    except Exception as error:  # transformers validation raises several types
        raise CheckpointError(f"{config_path} is not a valid Qwen3 config: {error}") from error
    if any(t != "full_attention" for t in (getattr(qcfg, "layer_types", None) or [])):
        raise CheckpointError(f"{qwen3_dir}: sliding-window attention layers are not supported")
    fields = shared_decoder_fields(qcfg, rope_theta_of(raw, qcfg, config_path))
    fields["qk_norm"] = True  # Qwen3 always normalises q and k per head
    return fields


def require_qwen3_equivalent(text: dict) -> None:
    """Refuse MiniMind decoder fields (raw or from a config) without a dense Qwen3 equivalent."""
    if moe_of(text):
        raise CheckpointError("the model uses a mixture-of-experts decoder, which has no dense Qwen3 equivalent")
    if not text.get("qk_norm", True):  # MiniMindConfig's default: qk_norm True
        raise CheckpointError("the model has qk_norm=False; Qwen3 always applies q_norm/k_norm (export it as Llama: "
                              "--format llama)")


def qwen3_config_from_minimind(text, tied: bool, dtype: torch.dtype | None = None) -> Qwen3Config:
    """The transformers `Qwen3Config` of a dense, QK-normed MiniMind decoder config `text`."""
    fields = dict(
        shared_export_fields(text, tied),
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=text.num_hidden_layers,
        layer_types=["full_attention"] * text.num_hidden_layers,
        architectures=["Qwen3ForCausalLM"],
    )
    if dtype is not None:
        fields["dtype"] = dtype
    return Qwen3Config(**fields)


QWEN3 = DecoderFamily(
    name="qwen3", model_type="qwen3", decoder_fields=qwen3_decoder_fields, require_equivalent=require_qwen3_equivalent,
    export_config=qwen3_config_from_minimind, model_class=Qwen3ForCausalLM,
)


def export_qwen3(model_dir: str | os.PathLike, dtype: str | torch.dtype | None = None):
    """Stream the decoder of a saved MiniMind-V folder into a transformers `Qwen3ForCausalLM`.

    Returns (model in eval mode, tokenizer or None). `dtype` None keeps the stored dtype of the embeddings.
    """
    return export_decoder(model_dir, QWEN3, dtype)


def convert_minimind_v_to_qwen3(model_dir, output_dir, dtype=None, overwrite: bool = False) -> Path:
    """`export_qwen3` + save a plain Qwen3 folder (config, weights, generation config, tokenizer) atomically."""
    return convert_minimind_v_to_decoder(model_dir, output_dir, QWEN3, dtype, overwrite)


__all__ = [
    "QWEN3", "QWEN3_PREFIX", "check_minimind_v_config", "check_qwen3_config", "convert_minimind_v_to_qwen3",
    "decoder_export_mapping", "decoder_import_mapping", "export_qwen3", "preflight_export",
    "qwen3_config_from_minimind", "qwen3_decoder_fields", "require_qwen3_equivalent",
]
