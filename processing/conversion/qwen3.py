"""The Qwen3 decoder on both sides of a conversion: which Qwen3 configs MiniMind reproduces, Qwen3 config <->
MiniMind decoder fields, the decoder's key mapping in both directions, and the export of a MiniMind-V decoder as a
plain transformers ``Qwen3ForCausalLM`` folder (``scripts/export_qwen3.py``).

Only dense decoders with QK-norm have a Qwen3 equivalent. Decoder fields are read with ``config.get_text_config()``,
so the export works on the flat MiniMind-V config and on one with a nested text config alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import Qwen3Config, Qwen3ForCausalLM

from modeling_minimind_v import MiniMindVConfig

from ..layout import DECODER_PREFIX, EMBEDDINGS, LM_HEAD, PROJECTOR_PREFIX, TOWER_PREFIX
from .safetensors_io import (
    CheckpointError, SafetensorsCheckpoint, atomic_output_dir, check_key_coverage, check_materialised,
    check_output_dir, expected_shapes, load_generation_config, load_tokenizer, parse_dtype, read_json, stream_into,
)

QWEN3_PREFIX = "model."  # where Qwen3ForCausalLM keeps its decoder


# ------------------------------------------------------------------------------------------------ configs


def check_qwen3_config(qwen3_dir: str | os.PathLike) -> dict:
    """Read `qwen3_dir/config.json` and refuse what MiniMind cannot reproduce; returns the raw dict.

    Reads the JSON itself because transformers 4 writes top-level `rope_theta`/`rope_scaling` and transformers 5
    writes `rope_parameters`; both layouts are checked here.
    """
    config_path = Path(qwen3_dir) / "config.json"
    raw = read_json(config_path)
    if raw.get("model_type") != "qwen3":
        raise CheckpointError(f"{config_path} has model_type {raw.get('model_type')!r}; expected 'qwen3' (dense)")
    layer_types = raw.get("layer_types") or []
    if raw.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
        raise CheckpointError(f"{config_path} enables sliding-window attention, which MiniMind does not support")
    for source in (raw.get("rope_parameters") or {}, raw.get("rope_scaling") or {}):
        rope_type = source.get("rope_type", source.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"{config_path} uses rope type {rope_type!r}; only default RoPE is supported")
        if source.get("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError(f"{config_path} uses partial rotary embeddings, which MiniMind does not support")
    return raw


def qwen3_decoder_fields(qwen3_dir: str | os.PathLike) -> dict:
    """MiniMindVConfig decoder fields equivalent to `qwen3_dir/config.json`.

    RoPE comes from the raw JSON (either layout); every other field from transformers' `Qwen3Config`, so absent
    fields take the defaults `Qwen3ForCausalLM.from_pretrained` would use (e.g. `head_dim` 128, not hidden/heads).
    """
    raw = check_qwen3_config(qwen3_dir)
    try:
        qcfg = Qwen3Config.from_dict(raw)
    except Exception as error:  # transformers validation raises several types
        raise CheckpointError(f"{Path(qwen3_dir) / 'config.json'} is not a valid Qwen3 config: {error}") from error
    if any(t != "full_attention" for t in (getattr(qcfg, "layer_types", None) or [])):
        raise CheckpointError(f"{qwen3_dir}: sliding-window attention layers are not supported")
    # transformers 5 layout first (what 5.x itself reads), then the transformers 4 top-level key.
    rope_theta = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta"))
    if rope_theta is None:  # neither layout in the file: transformers' default
        rope_theta = (getattr(qcfg, "rope_parameters", None) or {}).get("rope_theta", getattr(qcfg, "rope_theta", None))
    if rope_theta is None:
        raise CheckpointError(f"{qwen3_dir}/config.json gives no rope_theta")

    return {
        "vocab_size": qcfg.vocab_size,
        "hidden_size": qcfg.hidden_size,
        "num_hidden_layers": qcfg.num_hidden_layers,
        "num_attention_heads": qcfg.num_attention_heads,
        "num_key_value_heads": qcfg.num_key_value_heads or qcfg.num_attention_heads,
        "head_dim": qcfg.head_dim or qcfg.hidden_size // qcfg.num_attention_heads,
        "intermediate_size": qcfg.intermediate_size,
        "max_position_embeddings": qcfg.max_position_embeddings,
        "rope_theta": float(rope_theta),
        "rms_norm_eps": qcfg.rms_norm_eps,
        "hidden_act": qcfg.hidden_act,
        "attention_bias": bool(qcfg.attention_bias),
        "qk_norm": True,  # Qwen3 always normalises q and k per head
        "tie_word_embeddings": bool(getattr(qcfg, "tie_word_embeddings", False)),
        "initializer_range": qcfg.initializer_range,
        "dropout": 0.0,
        "use_moe": False,
        "bos_token_id": qcfg.bos_token_id,
        "eos_token_id": qcfg.eos_token_id,
        "pad_token_id": qcfg.pad_token_id,
    }


def _require_qwen3_equivalent(use_moe: bool, qk_norm: bool) -> None:
    if use_moe:
        raise CheckpointError("the model uses a mixture-of-experts decoder, which has no dense Qwen3 equivalent")
    if not qk_norm:
        raise CheckpointError("the model has qk_norm=False; Qwen3 always applies q_norm/k_norm")


def check_minimind_v_config(model_dir: str | os.PathLike) -> dict:
    """Read a MiniMind-V `config.json` and refuse decoders without a Qwen3 equivalent; returns the raw dict."""
    config_path = Path(model_dir) / "config.json"
    raw = read_json(config_path)
    if raw.get("model_type") != "minimind_v":
        raise CheckpointError(f"{model_dir} holds a {raw.get('model_type')!r} checkpoint, not a MiniMind-V one")
    text = raw.get("text_config") or raw  # decoder fields: flat, or nested in a text config
    # Defaults as in MiniMindVConfig: use_moe False, qk_norm True.
    _require_qwen3_equivalent(text.get("use_moe", False), text.get("qk_norm", True))
    return raw


def qwen3_config_from_minimind(config: MiniMindVConfig, dtype: torch.dtype | None = None) -> Qwen3Config:
    """The transformers `Qwen3Config` of a dense, QK-normed MiniMind decoder."""
    text = config.get_text_config()
    _require_qwen3_equivalent(text.use_moe, text.qk_norm)
    fields = dict(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        hidden_act=text.hidden_act,
        max_position_embeddings=text.max_position_embeddings,
        initializer_range=text.initializer_range,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(text.rope_theta)},
        attention_bias=text.attention_bias,
        attention_dropout=0.0,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=text.num_hidden_layers,
        layer_types=["full_attention"] * text.num_hidden_layers,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        architectures=["Qwen3ForCausalLM"],
    )
    if dtype is not None:
        fields["dtype"] = dtype
    return Qwen3Config(**fields)


# ------------------------------------------------------------------------------------------------ key mapping


def _decoder_mapping(ckpt: SafetensorsCheckpoint, source_prefix: str, target_prefix: str, tied: bool,
                     left_behind: tuple[str, ...] = ()):
    """Decoder keys under `source_prefix` -> the same keys under `target_prefix`, plus an untied `lm_head`; returns
    (target -> (ckpt, source key), unmapped source keys). Keys under `left_behind` prefixes are neither."""
    mapping, unmapped = {}, []
    for key in ckpt.keys():
        if key.startswith(source_prefix):
            mapping[target_prefix + key[len(source_prefix):]] = (ckpt, key)
        elif key == LM_HEAD:
            if not tied:  # a tied model takes no lm_head from the file
                mapping[key] = (ckpt, key)
        elif not key.startswith(left_behind):
            unmapped.append(key)
    return mapping, unmapped


def decoder_import_mapping(ckpt: SafetensorsCheckpoint, tied: bool):
    """Qwen3 keys -> MiniMind-V keys (see `_decoder_mapping`)."""
    return _decoder_mapping(ckpt, QWEN3_PREFIX, DECODER_PREFIX, tied)


def decoder_export_mapping(ckpt: SafetensorsCheckpoint, tied: bool):
    """MiniMind-V keys -> Qwen3 keys; the vision tower and the projector stay behind."""
    return _decoder_mapping(ckpt, DECODER_PREFIX, QWEN3_PREFIX, tied, left_behind=(TOWER_PREFIX, PROJECTOR_PREFIX))


# ------------------------------------------------------------------------------------------------ export


def preflight_export(model_dir, output_dir, overwrite: bool = False):
    """The checks of `convert_minimind_v_to_qwen3` that need no model: output folder, config, weight headers."""
    check_output_dir(output_dir, overwrite)
    check_minimind_v_config(model_dir)
    SafetensorsCheckpoint(model_dir)


def export_qwen3(model_dir: str | os.PathLike, dtype: str | torch.dtype | None = None):
    """Stream the decoder of a saved MiniMind-V folder into a transformers `Qwen3ForCausalLM`.

    Returns (model in eval mode, tokenizer or None). `dtype` None keeps the stored dtype of the embeddings.
    """
    model_dir, dtype = Path(model_dir), parse_dtype(dtype)
    check_minimind_v_config(model_dir)
    try:
        config = MiniMindVConfig.from_pretrained(str(model_dir))
    except Exception as error:
        raise CheckpointError(f"invalid MiniMind-V config in {model_dir}: {error}") from error
    ckpt = SafetensorsCheckpoint(model_dir)
    if dtype is None:
        stored = ckpt.dtype(EMBEDDINGS) if EMBEDDINGS in ckpt.keys() else "F32"
        dtype = {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)
    qwen_config = qwen3_config_from_minimind(config, dtype)

    with init_empty_weights(include_buffers=False):
        model = Qwen3ForCausalLM(qwen_config)
    expected = expected_shapes(model)
    if qwen_config.tie_word_embeddings:
        expected.pop(LM_HEAD, None)
    mapping, unmapped = decoder_export_mapping(ckpt, qwen_config.tie_word_embeddings)
    check_key_coverage(mapping, expected, unmapped, what=f"the MiniMind-V checkpoint in {model_dir}")
    stream_into(model, mapping, dtype)
    if qwen_config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    check_materialised(model)
    load_generation_config(model, model_dir)
    model.eval()

    has_tokenizer = (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()
    return model, (load_tokenizer(model_dir) if has_tokenizer else None)


def convert_minimind_v_to_qwen3(model_dir, output_dir, dtype=None, overwrite: bool = False) -> Path:
    """`export_qwen3` + save a plain Qwen3 folder (config, weights, generation config, tokenizer) atomically."""
    preflight_export(model_dir, output_dir, overwrite)
    with atomic_output_dir(output_dir, overwrite) as tmp_dir:
        model, tokenizer = export_qwen3(model_dir, dtype)
        model.save_pretrained(tmp_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir)
            _strip_processor_entries(tmp_dir / "tokenizer_config.json")
    return Path(output_dir)


def _strip_processor_entries(path: Path):
    """Drop the MiniMind-V processor's entries from a tokenizer config: the Qwen3 folder carries no processor code,
    and an `AutoProcessor` auto_map pointing at absent code would break `AutoProcessor`/pipelines on it."""
    if not path.is_file():
        return
    data = read_json(path)
    data.pop("processor_class", None)
    auto_map = {k: v for k, v in (data.pop("auto_map", None) or {}).items() if k != "AutoProcessor"}
    if auto_map:
        data["auto_map"] = auto_map
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = [
    "check_minimind_v_config", "check_qwen3_config", "convert_minimind_v_to_qwen3", "decoder_export_mapping",
    "decoder_import_mapping", "export_qwen3", "preflight_export", "qwen3_config_from_minimind",
    "qwen3_decoder_fields",
]
