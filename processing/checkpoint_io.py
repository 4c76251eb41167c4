"""Hugging Face safetensors checkpoint I/O: Qwen3 backbone + CLIP/SigLIP tower import, Qwen3 decoder export.

Weights are streamed tensor by tensor from a single `model.safetensors` or from index + shards into a model whose
parameters start on the meta device (buffers are built for real), so an import holds one copy of the weights plus
the tensor in flight. Loading is strict: every missing, unexpected or mis-shaped key is reported, never skipped.
Outputs are written into a temporary folder next to the target and renamed into place only when complete.

Project-side helpers (not Hub remote code). Every user-facing failure is a `CheckpointError` with a one-line message;
the `preflight_*` checks (output folder, JSON configs, safetensors headers) run before any model is built.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPImageProcessorPil,
    GenerationConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipImageProcessorPil,
)

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration

from modeling_minimind_v.processing_minimind_v import DEFAULT_CHAT_TEMPLATE, MiniMindVProcessor
from .image_processors import build_image_processor
from .tokenizers import IMAGE_TOKEN, ensure_vlm_special_tokens

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}

# Vision checkpoints: model_type -> family. Full dual-encoder checkpoints carry a text tower and heads that the
# vision tower does not use; they are skipped by prefix (anything else that is not the vision tower is an error).
VISION_FAMILIES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}
_IGNORED_VISION_PREFIXES = {
    "clip": ("text_model.", "text_projection.", "visual_projection.", "logit_scale"),
    "siglip": ("text_model.", "logit_scale", "logit_bias"),
}
_VISION_PREFIX = "vision_model."
# Image-processor settings taken from a vision checkpoint's preprocessor/processor config.
_IMAGE_PROCESSOR_FIELDS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported/exported as asked; the message is one line meant for the user."""


def _format_keys(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' | torch.dtype | None -> torch.dtype | None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise CheckpointError(f"unsupported dtype {name!r}; choose one of {list(DTYPES)}")
    return DTYPES[name]


# ------------------------------------------------------------------------------------------------ safetensors


class SafetensorsCheckpoint:
    """Lazy, validated view of the safetensors weights of one folder (`model.safetensors` or index + shards).

    Construction reads only the headers: it checks that every shard named by the index exists and is a valid
    safetensors file (a truncated file fails here, before any tensor is read) and records each key's file, shape
    and dtype. `get` opens the key's file, reads that one tensor and closes it again, so no file stays mapped.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is not a directory")
        single, index = self.directory / SINGLE_FILE, self.directory / INDEX_FILE
        self._file_of: dict[str, Path] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, str] = {}
        if single.is_file():
            self.files = [single]
            self._read_header(single, expected=None)
        elif index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no (or an empty) 'weight_map'")
            by_file: dict[str, list[str]] = {}
            for key, file_name in weight_map.items():
                by_file.setdefault(str(file_name), []).append(key)
            missing = [name for name in by_file if not (self.directory / name).is_file()]
            if missing:
                raise CheckpointError(f"{index} names shard file(s) that do not exist: {_format_keys(missing)}")
            self.files = [self.directory / name for name in sorted(by_file)]
            for name in sorted(by_file):
                self._read_header(self.directory / name, expected=by_file[name])
        else:
            found = [p.name for p in self.directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
            hint = f" (found {', '.join(sorted(found))}: only safetensors weights are supported)" if found else ""
            raise CheckpointError(f"{self.directory} has no {SINGLE_FILE} or {INDEX_FILE}{hint}")

    def _read_header(self, path: Path, expected: list[str] | None):
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
                present = set(keys)
                for key in keys if expected is None else [k for k in expected if k in present]:
                    tensor_slice = handle.get_slice(key)
                    self._shape[key] = tuple(tensor_slice.get_shape())
                    self._dtype[key] = tensor_slice.get_dtype()
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a valid safetensors file (truncated or corrupt?): {error}") from error
        if expected is not None:
            absent = set(expected) - set(keys)
            if absent:
                raise CheckpointError(
                    f"{path.name} lacks tensors that {INDEX_FILE} assigns to it: {_format_keys(absent)}"
                )
            keys = expected
        for key in keys:
            if key in self._file_of:
                raise CheckpointError(f"tensor {key} appears in both {self._file_of[key].name} and {path.name}")
            self._file_of[key] = path

    def keys(self) -> list[str]:
        return list(self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shape[key]

    def dtype(self, key: str) -> str:
        """The safetensors dtype string (F32, BF16, ...)."""
        return self._dtype[key]

    def get(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `key`, converted to `dtype` if given."""
        path = self._file_of[key]
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_tensor(key)
        except SafetensorError as error:
            raise CheckpointError(f"cannot read tensor {key} from {path}: {error}") from error
        return tensor if dtype is None else tensor.to(dtype)


# ------------------------------------------------------------------------------------------------ strict loading


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Persistent state of `model` (tied aliases included) as key -> shape; works on meta tensors."""
    return {key: tuple(value.shape) for key, value in model.state_dict(keep_vars=True).items()}


def check_key_coverage(
    mapping: dict[str, tuple[SafetensorsCheckpoint, str]],
    expected: dict[str, tuple[int, ...]],
    unexpected_sources: list[str] = (),
    what: str = "checkpoint",
):
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key of a strict load.

    `mapping` is target key -> (checkpoint, source key); `expected` is target key -> shape; `unexpected_sources`
    lists source keys that map to nothing.
    """
    problems = []
    missing = set(expected) - set(mapping)
    unexpected = [source for target, (_, source) in mapping.items() if target not in expected]
    unexpected += list(unexpected_sources)
    mis_shaped = [
        f"{source} {list(ckpt.shape(source))} vs model {target} {list(expected[target])}"
        for target, (ckpt, source) in mapping.items()
        if target in expected and ckpt.shape(source) != expected[target]
    ]
    not_float = [source for _, (ckpt, source) in mapping.items() if ckpt.dtype(source) not in _FLOAT_DTYPES]
    if missing:
        problems.append(f"missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_format_keys(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches: {_format_keys(mis_shaped, limit=4)}")
    if not_float:
        problems.append(f"non-floating tensors: {_format_keys(not_float)}")
    if problems:
        raise CheckpointError(f"{what} does not match the model config: " + "; ".join(problems))


def _assign_tensor(model: nn.Module, key: str, tensor: torch.Tensor):
    """Replace the (meta) parameter or buffer `key` of `model` by `tensor`, keeping requires_grad."""
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path)
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(tensor, requires_grad=old.requires_grad)
    elif name in module._buffers:
        module._buffers[name] = tensor
    else:
        raise CheckpointError(f"the model has no parameter or buffer {key}")


def stream_into(model: nn.Module, mapping: dict[str, tuple[SafetensorsCheckpoint, str]],
                dtype: torch.dtype | None = None):
    """Read each mapped tensor (one at a time, converted to `dtype`) into `model`."""
    for target, (ckpt, source) in mapping.items():
        _assign_tensor(model, target, ckpt.get(source, dtype))


def _check_materialised(model: nn.Module):
    meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if meta:  # cannot happen after a successful strict check; guards against silent partial loads
        raise CheckpointError(f"tensors left uninitialised after loading: {_format_keys(meta)}")


# ------------------------------------------------------------------------------------------------ atomic output


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output path that is a file, or a non-empty folder unless `overwrite`. Returns it absolute."""
    output_dir = Path(output_dir).absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointError(f"{output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{output_dir} already exists and is not empty (pass --overwrite to replace it)")
    return output_dir


@contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `output_dir`; rename it to `output_dir` only if the block succeeds.

    An existing non-empty `output_dir` is refused unless `overwrite`; it is replaced only after the new folder is
    complete. On any error the temporary folder is removed and `output_dir` is left as it was.
    """
    output_dir = check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same parent folder, hence same filesystem: the final os.replace is an atomic rename.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        yield tmp_dir
        if output_dir.exists():
            # Move the old folder aside first so that a failure between the two renames never loses both.
            old_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old_dir / "previous")
            os.replace(tmp_dir, output_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.replace(tmp_dir, output_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ config checks


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


def vision_family(vision_dir: str | os.PathLike) -> str:
    """'clip' or 'siglip' from `vision_dir/config.json`; anything else is refused."""
    config_path = Path(vision_dir) / "config.json"
    model_type = read_json(config_path).get("model_type")
    family = VISION_FAMILIES.get(model_type)
    if family is None:
        raise CheckpointError(
            f"{vision_dir} holds a {model_type!r} checkpoint; supported vision checkpoints are CLIP and SigLIP "
            f"(model_type one of {sorted(VISION_FAMILIES)})"
        )
    return family


def check_minimind_v_config(model_dir: str | os.PathLike) -> dict:
    """Read a MiniMind-V `config.json` and refuse decoders without a Qwen3 equivalent; returns the raw dict."""
    config_path = Path(model_dir) / "config.json"
    raw = read_json(config_path)
    if raw.get("model_type") != "minimind_v":
        raise CheckpointError(f"{model_dir} holds a {raw.get('model_type')!r} checkpoint, not a MiniMind-V one")
    # Defaults as in MiniMindVConfig: use_moe False, qk_norm True.
    if raw.get("use_moe", False):
        raise CheckpointError("the model uses a mixture-of-experts decoder, which has no dense Qwen3 equivalent")
    if not raw.get("qk_norm", True):
        raise CheckpointError("the model has qk_norm=False; Qwen3 always applies q_norm/k_norm")
    return raw


def preflight_import(qwen3_dir, vision_dir, output_dir, overwrite: bool = False):
    """The checks of `convert_qwen3_to_minimind_v` that need no model: output folder, configs, weight headers."""
    check_output_dir(output_dir, overwrite)
    check_qwen3_config(qwen3_dir)
    SafetensorsCheckpoint(qwen3_dir)
    vision_family(vision_dir)
    SafetensorsCheckpoint(vision_dir)


def preflight_export(model_dir, output_dir, overwrite: bool = False):
    """The checks of `convert_minimind_v_to_qwen3` that need no model: output folder, config, weight headers."""
    check_output_dir(output_dir, overwrite)
    check_minimind_v_config(model_dir)
    SafetensorsCheckpoint(model_dir)


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


# ------------------------------------------------------------------------------------------------ vision tower


@dataclass
class VisionSource:
    """A vision checkpoint folder: its family (clip | siglip), the tower's config and its lazy weights."""

    directory: Path
    family: str
    config: object  # a CLIPVisionConfig / SiglipVisionConfig
    checkpoint: SafetensorsCheckpoint


def open_vision_checkpoint(vision_dir: str | os.PathLike) -> VisionSource:
    """Open a CLIP (CLIPModel, CLIPVisionModel) or SigLIP (SiglipModel, SiglipVisionModel) folder."""
    vision_dir = Path(vision_dir)
    family = vision_family(vision_dir)
    try:
        config = AutoConfig.from_pretrained(str(vision_dir), trust_remote_code=False)
    except Exception as error:
        raise CheckpointError(f"cannot read the vision config in {vision_dir}: {error}") from error
    if hasattr(config, "vision_config"):  # dual encoder (CLIPModel, SiglipModel): keep the vision half
        config = config.vision_config
    return VisionSource(vision_dir, family, config, SafetensorsCheckpoint(vision_dir))


def vision_key_mapping(source: VisionSource, tower_keys, target_prefix: str):
    """Map checkpoint keys onto the vision tower's keys: returns (target -> (ckpt, source key), unmapped keys).

    Checkpoints differ in whether the tower's keys sit under `vision_model.` (every CLIPModel/SiglipModel and
    vision-only files saved by transformers 4) or not (vision-only files saved by transformers 5, whose
    CLIPVisionModel/SiglipVisionModel dropped that wrapper); the prefix is removed on both sides before matching.
    """
    tower_keys = list(tower_keys)
    tower_prefix = _VISION_PREFIX if tower_keys and all(k.startswith(_VISION_PREFIX) for k in tower_keys) else ""
    ignored = _IGNORED_VISION_PREFIXES[source.family]
    mapping, unmapped = {}, []
    for key in source.checkpoint.keys():
        if key.startswith(_VISION_PREFIX):
            core = key[len(_VISION_PREFIX):]
        elif key.startswith(ignored):
            continue
        else:
            core = key
        target = f"{target_prefix}{tower_prefix}{core}"
        if target in mapping:
            unmapped.append(key)  # the same tensor twice (with and without prefix): ambiguous
        else:
            mapping[target] = (source.checkpoint, key)
    return mapping, unmapped


def load_image_processor(vision_dir: str | os.PathLike, vision_config, family: str):
    """The PIL image processor described by the vision checkpoint's preprocessor/processor config, if it has one,
    else the project's default for `vision_config`; checked to produce image_size x image_size pixels."""
    vision_dir = Path(vision_dir)
    settings = None
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (vision_dir / name).is_file():
            data = read_json(vision_dir / name)
            settings = data.get("image_processor", data) if name == "processor_config.json" else data
            break
    if settings is None:
        processor = build_image_processor(vision_config)
    else:
        # Always the PIL backend, as build_image_processor does: no torchvision needed to use the checkpoint.
        processor_class = {"clip": CLIPImageProcessorPil, "siglip": SiglipImageProcessorPil}[family]
        kwargs = {key: settings[key] for key in _IMAGE_PROCESSOR_FIELDS if key in settings}
        try:
            processor = processor_class(**kwargs)
        except Exception as error:
            raise CheckpointError(f"invalid image processor settings in {vision_dir}: {error}") from error
    size = vision_config.image_size
    try:
        # An odd-sized probe image: catches settings that would not yield square image_size pixels (e.g. a resize
        # without centre crop), which the model would reject only at the first forward.
        pixels = processor(PIL.Image.new("RGB", (size + 7, size + 3)), return_tensors="pt")["pixel_values"]
    except Exception as error:
        raise CheckpointError(f"the image processor from {vision_dir} fails on a test image: {error}") from error
    if tuple(pixels.shape[1:]) != (3, size, size):
        raise CheckpointError(
            f"the image processor from {vision_dir} yields pixel_values {list(pixels.shape[1:])}, but the vision "
            f"tower expects [3, {size}, {size}]"
        )
    return processor


def _load_generation_config(model, directory: Path):
    """Carry `generation_config.json` (e.g. Qwen3's eos list and sampling defaults) over, if there is one."""
    if (directory / "generation_config.json").is_file():
        try:
            model.generation_config = GenerationConfig.from_pretrained(str(directory))
        except Exception as error:
            raise CheckpointError(f"invalid {directory / 'generation_config.json'}: {error}") from error


def _load_tokenizer(directory: Path):
    try:
        # trust_remote_code=False: never prompt, and never run code from the folder.
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as error:
        raise CheckpointError(f"cannot load a tokenizer from {directory}: {error}") from error


# ------------------------------------------------------------------------------------------------ import


def import_qwen3(
    qwen3_dir: str | os.PathLike,
    vision_dir: str | os.PathLike,
    projector_type: str = "mlp",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
) -> tuple[MiniMindVForConditionalGeneration, MiniMindVProcessor]:
    """Build a MiniMind-V model + processor from a Qwen3 folder and a CLIP/SigLIP folder.

    The decoder and the vision tower are streamed in strictly; the projector is freshly initialised (seeded with
    `seed`). `dtype` is 'float32' | 'bfloat16' | a torch dtype. Returns (model in eval mode, MiniMindVProcessor).
    """
    qwen3_dir, vision_dir, dtype = Path(qwen3_dir), Path(vision_dir), parse_dtype(dtype)
    decoder = qwen3_decoder_fields(qwen3_dir)
    text_ckpt = SafetensorsCheckpoint(qwen3_dir)
    vision = open_vision_checkpoint(vision_dir)

    tokenizer = _load_tokenizer(qwen3_dir)
    ensure_vlm_special_tokens(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if decoder["pad_token_id"] is None:
        decoder["pad_token_id"] = tokenizer.pad_token_id
    image_processor = load_image_processor(vision_dir, vision.config, vision.family)

    # The head counts as tied if the file has no separate head or stores the same values as the embeddings;
    # a differing head is kept (transformers 5 skips tying in that case too).
    untied_head = "lm_head.weight" in text_ckpt.keys()
    if untied_head and decoder["tie_word_embeddings"] and "model.embed_tokens.weight" in text_ckpt.keys():
        untied_head = not torch.equal(text_ckpt.get("lm_head.weight"), text_ckpt.get("model.embed_tokens.weight"))
    decoder["tie_word_embeddings"] = not untied_head
    try:
        config = MiniMindVConfig(
            **decoder,
            vision_config=vision.config,
            projector_type=projector_type,
            # A newly added <|image_pad|> lies beyond the vocabulary until the embeddings are resized below.
            image_token_id=image_token_id if image_token_id < decoder["vocab_size"] else 0,
        )
    except ValueError as error:
        raise CheckpointError(f"cannot build a MiniMind-V config: {error}") from error

    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (RoPE, position ids) real
        model = MiniMindVForConditionalGeneration(config)
    expected = _expected_shapes(model)
    tower_prefix, projector_prefix = "model.vision_tower.", "model.multi_modal_projector."
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    decoder_expected = {k: v for k, v in expected.items() if not k.startswith((tower_prefix, projector_prefix))}
    tower_expected = {k: v for k, v in expected.items() if k.startswith(tower_prefix)}

    mapping, unmapped = {}, []
    for key in text_ckpt.keys():
        if key.startswith("model."):
            mapping["model.language_model." + key[len("model."):]] = (text_ckpt, key)
        elif key == "lm_head.weight":
            if not config.tie_word_embeddings:
                mapping[key] = (text_ckpt, key)
        else:
            unmapped.append(key)
    check_key_coverage(mapping, decoder_expected, unmapped, what=f"the Qwen3 checkpoint in {qwen3_dir}")
    vision_mapping, vision_unmapped = vision_key_mapping(
        vision, [k[len(tower_prefix):] for k in tower_expected], tower_prefix
    )
    check_key_coverage(vision_mapping, tower_expected, vision_unmapped, what=f"the vision checkpoint in {vision_dir}")

    stream_into(model, {**mapping, **vision_mapping}, dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    projector = model.model.multi_modal_projector
    projector.to_empty(device="cpu")
    torch.manual_seed(seed)
    projector.apply(model._init_weights)  # the initialisation a freshly constructed MiniMind-V gives its projector
    projector.to(dtype)
    _check_materialised(model)

    if len(tokenizer) > config.vocab_size:
        # Only when added tokens do not fit in the table's unused rows (Qwen3: 151669 tokens, 151936 rows).
        model.resize_token_embeddings(len(tokenizer))
    model.config.image_token_id = image_token_id
    model.config.dtype = dtype
    _load_generation_config(model, qwen3_dir)
    model.eval()

    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # the tokenizer alone renders the same prompts as the processor
    processor = MiniMindVProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.image_seq_length
    )
    return model, processor


def convert_qwen3_to_minimind_v(qwen3_dir, vision_dir, output_dir, projector_type: str = "mlp", dtype="float32",
                                overwrite: bool = False, seed: int = 0) -> Path:
    """`import_qwen3` + save model and processor into `output_dir` atomically. Returns the output path."""
    preflight_import(qwen3_dir, vision_dir, output_dir, overwrite)
    with atomic_output_dir(output_dir, overwrite) as tmp_dir:
        model, processor = import_qwen3(qwen3_dir, vision_dir, projector_type, dtype, seed)
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
    return Path(output_dir)


# ------------------------------------------------------------------------------------------------ export


def qwen3_config_from_minimind(config: MiniMindVConfig, dtype: torch.dtype | None = None) -> Qwen3Config:
    """The transformers `Qwen3Config` of a dense, QK-normed MiniMind decoder."""
    if config.use_moe:
        raise CheckpointError("the model uses a mixture-of-experts decoder, which has no dense Qwen3 equivalent")
    if not config.qk_norm:
        raise CheckpointError("the model has qk_norm=False; Qwen3 always applies q_norm/k_norm")
    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        attention_bias=config.attention_bias,
        attention_dropout=0.0,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=config.num_hidden_layers,
        layer_types=["full_attention"] * config.num_hidden_layers,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        architectures=["Qwen3ForCausalLM"],
    )
    if dtype is not None:
        fields["dtype"] = dtype
    return Qwen3Config(**fields)


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
    embed_key = "model.language_model.embed_tokens.weight"
    if dtype is None:
        stored = ckpt.dtype(embed_key) if embed_key in ckpt.keys() else "F32"
        dtype = {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)
    qwen_config = qwen3_config_from_minimind(config, dtype)

    with init_empty_weights(include_buffers=False):
        model = Qwen3ForCausalLM(qwen_config)
    expected = _expected_shapes(model)
    if qwen_config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    mapping, unmapped = {}, []
    for key in ckpt.keys():
        if key.startswith("model.language_model."):
            mapping["model." + key[len("model.language_model."):]] = (ckpt, key)
        elif key == "lm_head.weight":
            if not qwen_config.tie_word_embeddings:
                mapping[key] = (ckpt, key)
        elif not key.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            unmapped.append(key)
    check_key_coverage(mapping, expected, unmapped, what=f"the MiniMind-V checkpoint in {model_dir}")
    stream_into(model, mapping, dtype)
    if qwen_config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    _check_materialised(model)
    _load_generation_config(model, model_dir)
    model.eval()

    has_tokenizer = (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()
    return model, (_load_tokenizer(model_dir) if has_tokenizer else None)


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
    "CheckpointError",
    "SafetensorsCheckpoint",
    "atomic_output_dir",
    "check_key_coverage",
    "check_minimind_v_config",
    "check_output_dir",
    "check_qwen3_config",
    "convert_minimind_v_to_qwen3",
    "convert_qwen3_to_minimind_v",
    "export_qwen3",
    "import_qwen3",
    "load_image_processor",
    "open_vision_checkpoint",
    "parse_dtype",
    "preflight_export",
    "preflight_import",
    "qwen3_config_from_minimind",
    "qwen3_decoder_fields",
    "read_json",
    "stream_into",
    "vision_family",
    "vision_key_mapping",
]
