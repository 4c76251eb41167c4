"""What converting a Hugging Face causal-LM decoder (Qwen3, Llama) to and from MiniMind takes, shared by every
family: the :class:`DecoderFamily` record a family module fills in, the RoPE fields read from a raw config.json
(transformers 4 and 5 layouts), the decoder key mapping in both directions, and the export of a MiniMind-V decoder
as a plain transformers checkpoint of the family (``scripts/export_qwen3.py``).

Qwen3 and Llama keep their decoder under ``model.`` with the same module names as MiniMind; the only difference in
the weights is Qwen3's per-head q/k norm. Decoder fields are read with ``config.get_text_config()``, so the export
works on the flat MiniMind-V config and on one with a nested text config alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights

from modeling_minimind_v import MiniMindVConfig

from ..layout import DECODER_PREFIX, EMBEDDINGS, LM_HEAD, PROJECTOR_PREFIX, TOWER_PREFIX
from .safetensors_io import (
    CheckpointError, SafetensorsCheckpoint, atomic_output_dir, check_key_coverage, check_materialised,
    check_output_dir, expected_shapes, load_generation_config, load_tokenizer, parse_dtype, read_json, stream_into,
)

HF_DECODER_PREFIX = "model."  # where Qwen3ForCausalLM and LlamaForCausalLM keep their decoder


@dataclass(frozen=True)
class DecoderFamily:
    """One Hugging Face decoder family MiniMind reproduces exactly.

    `decoder_fields(folder)` checks the folder's config.json and returns MiniMindVConfig decoder fields;
    `require_equivalent(text_fields)` refuses MiniMind decoders the family cannot express (reads a dict of decoder
    fields, raw JSON or a config's); `export_config(text_config, tied, dtype)` builds the family's transformers config;
    `model_class` is its `...ForCausalLM`.
    """

    name: str  # what messages and --format call it
    model_type: str  # config.json model_type
    decoder_fields: Callable[[Path], dict]
    require_equivalent: Callable[[dict], None]
    export_config: Callable[..., object]
    model_class: type


# ------------------------------------------------------------------------------------------------ configs


def check_unsupported_features(raw: dict, config_path: Path) -> None:
    """Refuse what no MiniMind decoder reproduces: RoPE scaling (any rope type but default, partial rotary) in either
    the transformers 4 (`rope_scaling`) or the transformers 5 (`rope_parameters`) layout, sliding-window attention,
    and quantized weights."""
    layer_types = raw.get("layer_types") or []
    # Qwen-style configs carry a `sliding_window` size next to `use_sliding_window: false`; a window given without
    # that switch (Mistral-style) is active.
    window = raw.get("sliding_window") not in (None, 0)
    if raw.get("use_sliding_window") or (window and "use_sliding_window" not in raw):
        raise CheckpointError(f"{config_path} enables sliding-window attention (sliding_window "
                              f"{raw.get('sliding_window')!r}), which MiniMind does not support")
    if any(t != "full_attention" for t in layer_types):
        raise CheckpointError(f"{config_path} enables sliding-window attention (layer_types "
                              f"{sorted(set(layer_types))}), which MiniMind does not support")
    for source in (raw.get("rope_parameters") or {}, raw.get("rope_scaling") or {}):
        rope_type = source.get("rope_type", source.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"{config_path} uses rope type {rope_type!r}; only default RoPE is supported")
        if source.get("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError(f"{config_path} uses partial rotary embeddings, which MiniMind does not support")
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{config_path} uses partial rotary embeddings, which MiniMind does not support")
    quantization = raw.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        raise CheckpointError(f"{config_path} describes a quantized checkpoint (quant_method {method!r}); "
                              "convert it to floating-point safetensors first")


def rope_theta_of(raw: dict, hf_config, config_path: Path) -> float:
    """RoPE base: the transformers 5 layout first (what 5.x itself reads), then the transformers 4 top-level key,
    then the default transformers gives the parsed config."""
    rope_theta = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta"))
    if rope_theta is None:
        parsed = getattr(hf_config, "rope_parameters", None) or {}
        rope_theta = parsed.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if rope_theta is None:
        raise CheckpointError(f"{config_path} gives no rope_theta")
    return float(rope_theta)


def shared_decoder_fields(hf_config, rope_theta: float) -> dict:
    """The MiniMindVConfig decoder fields Qwen3 and Llama configs spell the same way."""
    return {
        "vocab_size": hf_config.vocab_size,
        "hidden_size": hf_config.hidden_size,
        "num_hidden_layers": hf_config.num_hidden_layers,
        "num_attention_heads": hf_config.num_attention_heads,
        "num_key_value_heads": hf_config.num_key_value_heads or hf_config.num_attention_heads,
        "head_dim": getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
        "intermediate_size": hf_config.intermediate_size,
        "max_position_embeddings": hf_config.max_position_embeddings,
        "rope_theta": rope_theta,
        "rms_norm_eps": hf_config.rms_norm_eps,
        "hidden_act": hf_config.hidden_act,
        "attention_bias": bool(hf_config.attention_bias),
        "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", False)),
        "initializer_range": hf_config.initializer_range,
        "dropout": 0.0,
        "use_moe": False,
        "bos_token_id": hf_config.bos_token_id,
        "eos_token_id": hf_config.eos_token_id,
        "pad_token_id": hf_config.pad_token_id,
    }


def shared_export_fields(text, tied: bool) -> dict:
    """The transformers config fields (Qwen3Config, LlamaConfig) of a dense MiniMind decoder `text`."""
    return dict(
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
        tie_word_embeddings=tied,
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
    )


def text_fields_of(raw: dict) -> dict:
    """The decoder fields of a raw MiniMind-V config.json: flat, or nested in a text config."""
    return raw.get("text_config") or raw


def check_minimind_v_config(model_dir: str | os.PathLike, family: DecoderFamily | None = None) -> dict:
    """Read a MiniMind-V `config.json` (refusing other model types) and, given a `family`, refuse decoders it cannot
    express; returns the raw dict."""
    config_path = Path(model_dir) / "config.json"
    raw = read_json(config_path)
    if raw.get("model_type") != "minimind_v":
        raise CheckpointError(f"{model_dir} holds a {raw.get('model_type')!r} checkpoint, not a MiniMind-V one")
    if family is not None:
        family.require_equivalent(text_fields_of(raw))
    return raw


def moe_of(fields: dict) -> bool:
    """Whether decoder fields (raw JSON: current `num_experts` or legacy `use_moe`) describe a mixture of experts."""
    return bool(fields.get("num_experts") or fields.get("use_moe"))


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
    """Hugging Face decoder keys -> MiniMind-V keys (see `_decoder_mapping`)."""
    return _decoder_mapping(ckpt, HF_DECODER_PREFIX, DECODER_PREFIX, tied)


def decoder_export_mapping(ckpt: SafetensorsCheckpoint, tied: bool):
    """MiniMind-V keys -> Hugging Face decoder keys; the vision tower and the projector stay behind."""
    return _decoder_mapping(ckpt, DECODER_PREFIX, HF_DECODER_PREFIX, tied,
                            left_behind=(TOWER_PREFIX, PROJECTOR_PREFIX))


# ------------------------------------------------------------------------------------------------ export


def preflight_export(model_dir, output_dir, family: DecoderFamily, overwrite: bool = False):
    """The checks of `convert_minimind_v_to_decoder` that need no model: output folder, config, weight headers."""
    check_output_dir(output_dir, overwrite, inputs=[model_dir])
    check_minimind_v_config(model_dir, family)
    SafetensorsCheckpoint(model_dir)


def export_decoder(model_dir: str | os.PathLike, family: DecoderFamily, dtype: str | torch.dtype | None = None):
    """Stream the decoder of a saved MiniMind-V folder into the family's transformers `...ForCausalLM`.

    Returns (model in eval mode, tokenizer or None). `dtype` None keeps the stored dtype of the embeddings.
    """
    model_dir, dtype = Path(model_dir), parse_dtype(dtype)
    check_minimind_v_config(model_dir, family)
    try:
        config = MiniMindVConfig.from_pretrained(str(model_dir))
    except Exception as error:
        raise CheckpointError(f"invalid MiniMind-V config in {model_dir}: {error}") from error
    ckpt = SafetensorsCheckpoint(model_dir)
    if dtype is None:
        stored = ckpt.dtype(EMBEDDINGS) if EMBEDDINGS in ckpt.keys() else "F32"
        dtype = {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)
    text = config.get_text_config()
    family.require_equivalent({"num_experts": text.num_experts, "qk_norm": text.qk_norm})
    hf_config = family.export_config(text, config.tie_word_embeddings, dtype)

    with init_empty_weights(include_buffers=False):
        model = family.model_class(hf_config)
    expected = expected_shapes(model)
    if hf_config.tie_word_embeddings:
        expected.pop(LM_HEAD, None)
    mapping, unmapped = decoder_export_mapping(ckpt, hf_config.tie_word_embeddings)
    check_key_coverage(mapping, expected, unmapped, what=f"the MiniMind-V checkpoint in {model_dir}")
    stream_into(model, mapping, dtype)
    if hf_config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    check_materialised(model)
    load_generation_config(model, model_dir)
    model.eval()

    has_tokenizer = (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()
    return model, (load_tokenizer(model_dir) if has_tokenizer else None)


def convert_minimind_v_to_decoder(model_dir, output_dir, family: DecoderFamily, dtype=None,
                                  overwrite: bool = False) -> Path:
    """`export_decoder` + save a plain folder of the family (config, weights, generation config, tokenizer)
    atomically. An output folder that is (or contains) `model_dir` is refused."""
    preflight_export(model_dir, output_dir, family, overwrite)
    with atomic_output_dir(output_dir, overwrite, inputs=[model_dir]) as tmp_dir:
        model, tokenizer = export_decoder(model_dir, family, dtype)
        model.save_pretrained(tmp_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir)
            _strip_processor_entries(tmp_dir / "tokenizer_config.json")
    return Path(output_dir)


def _strip_processor_entries(path: Path):
    """Drop the MiniMind-V processor's entries from a tokenizer config: the exported folder carries no processor
    code, and an `AutoProcessor` auto_map pointing at absent code would break `AutoProcessor`/pipelines on it."""
    if not path.is_file():
        return
    data = read_json(path)
    data.pop("processor_class", None)
    auto_map = {k: v for k, v in (data.pop("auto_map", None) or {}).items() if k != "AutoProcessor"}
    if auto_map:
        data["auto_map"] = auto_map
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = [
    "DecoderFamily", "HF_DECODER_PREFIX", "check_minimind_v_config", "check_unsupported_features",
    "convert_minimind_v_to_decoder", "decoder_export_mapping", "decoder_import_mapping", "export_decoder", "moe_of",
    "preflight_export", "rope_theta_of", "shared_decoder_fields", "shared_export_fields", "text_fields_of",
]
