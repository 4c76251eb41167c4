"""Health check of a saved MiniMind-V model folder (what ``scripts/diagnose.py`` reports).

A config summary (decoder shape, vision tower, projector, image_seq_length, vocabulary), parameter counts (total /
trainable; vision tower, projector, decoder, lm_head), the device and dtype, then one forward pass on a synthetic
image and a chat prompt built with the folder's processor (raw token ids when the folder has none). It flags
non-finite weights, NaN/Inf in the logits, hidden states or image features, processor/config disagreements and
image-token mismatches (the prompt's image tokens must equal image_seq_length x images), and reports the model's own
ValueError cleanly. A folder that cannot be loaded at all raises :class:`LoadError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging as hf_logging

from .processors import processor_problems
from .rows import IMAGE_PLACEHOLDER
from .training.parts import parameter_report

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files whose presence means the folder is meant to carry a processor: failing to load one then is a problem.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
PROMPT = f"{IMAGE_PLACEHOLDER}\nWhat color is the shape?"


class LoadError(Exception):
    """The folder cannot be diagnosed at all (the CLI reports it as one `error:` line)."""


@dataclass
class Diagnosis:
    """The report, in order, and what it found: problems fail the check, warnings do not."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def say(self, line: str) -> None:
        self.lines.append(line)

    def report(self) -> str:
        """The whole report, ending with the result section."""
        result = ["== result", *(f"WARNING: {w}" for w in self.warnings)]
        if self.problems:
            result += [f"PROBLEM: {p}" for p in self.problems] + [f"{len(self.problems)} problem(s) found"]
        else:
            result.append("OK: no problems found")
        return "\n".join(self.lines + result)


def fmt(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


def resolve_device_and_dtype(device: str | None, dtype: str = "auto") -> tuple[str, torch.dtype]:
    """`device` None: cuda if available; dtype "auto": bfloat16 on cuda, float32 on cpu."""
    if device == "cuda" and not torch.cuda.is_available():
        raise LoadError("--device cuda but CUDA is not available")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        return device, torch.bfloat16 if device == "cuda" else torch.float32
    return device, DTYPES[dtype]


def load(folder: Path, device: str, dtype: torch.dtype):
    if not folder.exists():
        raise LoadError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise LoadError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise LoadError(f"{folder} has no config.json (not a saved model folder)")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=dtype)
    except Exception as error:  # any failure here (bad JSON, missing code, bad weights) means "cannot load"
        message = " ".join(str(error).split())  # one line, whatever the exception text looks like
        raise LoadError(f"cannot load a model from {folder}: {type(error).__name__}: {message[:300]}") from error
    return config, model.to(device).eval()


def load_processor(folder: Path, diagnosis: Diagnosis):
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        diagnosis.say("processor: none in the folder (using raw token ids and random pixels)")
        return None
    try:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    except Exception as error:  # a processor that is present but broken is worth reporting, not crashing on
        diagnosis.problems.append(f"the folder has processor files but AutoProcessor failed: "
                                  f"{type(error).__name__}: {error}")
        return None
    if not hasattr(processor, "image_seq_length") or not hasattr(processor, "tokenizer"):
        diagnosis.problems.append(f"AutoProcessor loaded {type(processor).__name__}, not a MiniMind-V processor")
        return None
    return processor


def summarize(config, model, device: str, diagnosis: Diagnosis) -> None:
    say, vision, text = diagnosis.say, config.vision_config, config.get_text_config()
    say("== config")
    say(f"model_type: {config.model_type}")
    moe = (f", MoE {text.n_routed_experts} experts top-{text.num_experts_per_tok} "
           f"+ {text.n_shared_experts} shared") if text.use_moe else ""
    say(f"decoder: {text.num_hidden_layers} layers, hidden {text.hidden_size}, heads {text.num_attention_heads}"
        f" (kv {text.num_key_value_heads}, head_dim {text.head_dim}), intermediate {text.intermediate_size}"
        f"{moe}, max_position {text.max_position_embeddings}")
    say(f"vision tower: {vision.model_type} ({type(model.model.vision_tower).__name__}), {vision.num_hidden_layers}"
        f" layers, hidden {vision.hidden_size}, image {vision.image_size}px, patch {vision.patch_size} -> "
        f"{config.num_patches} patches, feature layer {config.vision_feature_layer}, "
        f"frozen={config.freeze_vision_tower}")
    say(f"projector: {config.projector_type} ({type(model.model.multi_modal_projector).__name__})")
    say(f"image_seq_length: {config.image_seq_length}, image_token_id: {config.image_token_id}")
    say(f"vocab_size: {text.vocab_size}, tie_word_embeddings: {config.tie_word_embeddings}")

    say("== parameters")
    report = parameter_report(model)
    say(f"total: {fmt(report['all']['total'])}")
    say(f"trainable: {fmt(report['all']['trainable'])}")
    for part in ("vision", "projector", "decoder"):
        say(f"  {part}: {fmt(report[part]['total'])}, trainable {fmt(report[part]['trainable'])}")
    if model.lm_head.weight is model.get_input_embeddings().weight:
        say(f"  lm_head: tied to embed_tokens ({fmt(model.lm_head.weight.numel())} shared, not counted again)")
    else:
        say(f"  lm_head: {fmt(model.lm_head.weight.numel())} (untied, counted in decoder)")

    say("== runtime")
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    say(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    say(f"dtype: {', '.join(dtypes)}")


def check_weights(model, config, diagnosis: Diagnosis) -> None:
    if config.freeze_vision_tower and any(p.requires_grad for p in model.model.vision_tower.parameters()):
        # Not fatal for inference, but training would update (and keep activations for) a tower meant to be frozen.
        diagnosis.warnings.append("config.freeze_vision_tower is true but the loaded vision tower has trainable "
                                  "parameters (freeze it before training)")
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        diagnosis.problems.append(f"NaN/Inf in {len(bad)} weight tensor(s): {shown}")


def synthetic_image(size: int) -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (size, size), (255, 255, 255))
    PIL.ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30))
    return image


def build_inputs(config, processor, diagnosis: Diagnosis) -> dict:
    vision = config.vision_config
    if processor is not None:
        diagnosis.problems.extend(processor_problems(config, processor))
        prompt = processor.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=False)
        prompt = prompt[0] if isinstance(prompt, list) else prompt
        inputs = dict(processor(images=[synthetic_image(vision.image_size)], text=prompt, return_tensors="pt"))
        inputs.pop("token_type_ids", None)
        expected = (getattr(vision, "num_channels", 3), vision.image_size, vision.image_size)
        if tuple(inputs["pixel_values"].shape[1:]) != expected:
            diagnosis.problems.append(f"processor pixel_values {list(inputs['pixel_values'].shape[1:])} != vision "
                                      f"tower input {list(expected)}")
        pixels = inputs["pixel_values"]
        n_bad = int((~torch.isfinite(pixels)).sum())
        if n_bad:  # a plain synthetic image: the processor's own settings (image_std 0, ...) made them
            diagnosis.problems.append(f"pixel_values: the processor turned a plain RGB image into {n_bad} NaN/Inf "
                                      f"values of {pixels.numel()} (check image_mean / image_std in "
                                      "preprocessor_config.json)")
        diagnosis.say(f"prompt: {prompt!r}")
        return inputs
    # No processor: a plain id sequence with one image block, avoiding the image token outside the block.
    vocab_size = config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, vocab_size, (16,), generator=generator)
    text[text == config.image_token_id] = (config.image_token_id + 1) % vocab_size
    image_block = torch.full((config.image_seq_length,), config.image_token_id)
    input_ids = torch.cat([text[:4], image_block, text[4:]]).unsqueeze(0)
    pixels = torch.randn(1, getattr(vision, "num_channels", 3), vision.image_size, vision.image_size,
                         generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixels}


def check_forward(model, config, inputs: dict, diagnosis: Diagnosis) -> None:
    diagnosis.say("== forward")
    n_images = inputs["pixel_values"].shape[0]
    n_image_tokens = int((inputs["input_ids"] == config.image_token_id).sum())
    expected = config.image_seq_length * n_images
    diagnosis.say(f"input_ids: {list(inputs['input_ids'].shape)}, pixel_values: {list(inputs['pixel_values'].shape)}"
                  f", image tokens {n_image_tokens} (expected {config.image_seq_length} x {n_images} = {expected})")
    if n_image_tokens != expected:
        diagnosis.problems.append(f"image-token mismatch: the prompt has {n_image_tokens} image tokens, expected "
                                  f"image_seq_length {config.image_seq_length} x {n_images} image(s) = {expected}")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    try:
        with torch.inference_mode():
            out = model(**inputs, output_hidden_states=True, use_cache=False)
    except ValueError as error:
        diagnosis.problems.append(f"forward raised ValueError: {error}")
        return
    logits = out.logits.float()
    finite = torch.isfinite(logits)
    diagnosis.say(f"logits: {list(logits.shape)}, max |logit| "
                  f"{logits[finite].abs().max().item() if finite.any() else 'n/a'}")
    tensors = {"logits": out.logits, "image features": out.image_hidden_states}
    # hidden_states[0] is the input embeddings (image features merged in), then one entry per decoder layer.
    for index, hidden in enumerate(out.hidden_states or ()):
        tensors["embeddings" if index == 0 else f"hidden state of layer {index}"] = hidden
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        if n_nan or n_inf:
            diagnosis.problems.append(f"{name}: {n_nan} NaN and {n_inf} Inf values of {tensor.numel()}")


def diagnose(folder, device: str | None = None, dtype: str = "auto") -> Diagnosis:
    """Diagnose the model folder `folder` on `device` in `dtype` ("auto", "float32", "bfloat16", "float16");
    raises :class:`LoadError` when the folder cannot be loaded at all."""
    # Keep the report readable (loading chatter is not a diagnosis); restored after, for in-process callers.
    verbosity, progress_bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        device, torch_dtype = resolve_device_and_dtype(device, dtype)
        folder = Path(folder)
        config, model = load(folder, device, torch_dtype)
        diagnosis = Diagnosis()
        summarize(config, model, device, diagnosis)
        check_weights(model, config, diagnosis)
        processor = load_processor(folder, diagnosis)
        try:
            inputs = build_inputs(config, processor, diagnosis)
        except ValueError as error:  # the processor refused the prompt/image: report it, there is nothing to run
            diagnosis.problems.append(f"processor failed on the synthetic prompt: {error}")
        else:
            check_forward(model, config, inputs, diagnosis)
        return diagnosis
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bar:
            hf_logging.enable_progress_bar()


__all__ = ["DTYPES", "Diagnosis", "LoadError", "diagnose"]
