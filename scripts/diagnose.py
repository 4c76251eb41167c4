"""CLI: health check of a saved MiniMind-V model folder.

    python scripts/diagnose.py --model OUT/sft [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]

Prints a config summary (decoder shape, vision tower, projector, image_seq_length, vocabulary), parameter counts
(total / trainable; vision tower, projector, decoder, lm_head), the device and dtype, then runs one forward pass on
a synthetic image and a chat prompt built with the folder's processor (raw token ids when the folder has none). It
flags non-finite weights, NaN/Inf in the logits, hidden states or image features, processor/config disagreements
and image-token mismatches (the prompt's image tokens must equal image_seq_length x images), and reports the
model's own ValueError cleanly. Exit code 0 when healthy, 1 when a problem was found, 2 (with one `error:` line)
when the folder is missing or cannot be loaded.
"""

import argparse
import sys
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging as hf_logging

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files whose presence means the folder is meant to carry a processor: failing to load one then is a problem.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
PROMPT = "<image>\nWhat color is the shape?"


class LoadError(Exception):
    """The folder cannot be diagnosed at all (reported as one `error:` line)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="auto: bfloat16 on cuda, float32 on cpu")
    return parser.parse_args(argv)


def fmt(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


def count(params) -> tuple[int, int]:
    """(total, trainable) over unique parameters (tied weights are counted once)."""
    unique = {id(p): p for p in params}.values()
    return sum(p.numel() for p in unique), sum(p.numel() for p in unique if p.requires_grad)


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


def load_processor(folder: Path, problems: list[str]):
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        print("processor: none in the folder (using raw token ids and random pixels)")
        return None
    try:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    except Exception as error:  # a processor that is present but broken is worth reporting, not crashing on
        problems.append(f"the folder has processor files but AutoProcessor failed: {type(error).__name__}: {error}")
        return None
    if not hasattr(processor, "image_seq_length") or not hasattr(processor, "tokenizer"):
        problems.append(f"AutoProcessor loaded {type(processor).__name__}, not a MiniMind-V processor")
        return None
    return processor


def print_summary(config, model, device: str) -> None:
    vision = config.vision_config
    print("== config")
    print(f"model_type: {config.model_type}")
    moe = (f", MoE {config.n_routed_experts} experts top-{config.num_experts_per_tok} "
           f"+ {config.n_shared_experts} shared") if config.use_moe else ""
    print(f"decoder: {config.num_hidden_layers} layers, hidden {config.hidden_size}, heads {config.num_attention_heads}"
          f" (kv {config.num_key_value_heads}, head_dim {config.head_dim}), intermediate {config.intermediate_size}"
          f"{moe}, max_position {config.max_position_embeddings}")
    print(f"vision tower: {vision.model_type} ({type(model.model.vision_tower).__name__}), {vision.num_hidden_layers}"
          f" layers, hidden {vision.hidden_size}, image {vision.image_size}px, patch {vision.patch_size} -> "
          f"{config.num_patches} patches, feature layer {config.vision_feature_layer}, "
          f"frozen={config.freeze_vision_tower}")
    print(f"projector: {config.projector_type} ({type(model.model.multi_modal_projector).__name__})")
    print(f"image_seq_length: {config.image_seq_length}, image_token_id: {config.image_token_id}")
    print(f"vocab_size: {config.vocab_size}, tie_word_embeddings: {config.tie_word_embeddings}")

    print("== parameters")
    total, trainable = count(model.parameters())
    print(f"total: {fmt(total)}")
    print(f"trainable: {fmt(trainable)}")
    parts = {
        "vision": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "decoder": model.model.language_model,
    }
    for name, module in parts.items():
        part_total, part_trainable = count(module.parameters())
        print(f"  {name}: {fmt(part_total)}, trainable {fmt(part_trainable)}")
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    if tied:
        print(f"  lm_head: tied to embed_tokens ({fmt(model.lm_head.weight.numel())} shared, not counted again)")
    else:
        print(f"  lm_head: {fmt(model.lm_head.weight.numel())} (untied)")

    print("== runtime")
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"dtype: {', '.join(dtypes)}")


def check_weights(model, config, problems: list[str], warnings: list[str]) -> None:
    if config.freeze_vision_tower and any(p.requires_grad for p in model.model.vision_tower.parameters()):
        # Not fatal for inference, but training would update (and keep activations for) a tower meant to be frozen.
        warnings.append("config.freeze_vision_tower is true but the loaded vision tower has trainable parameters "
                        "(freeze it before training)")
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        problems.append(f"NaN/Inf in {len(bad)} weight tensor(s): {shown}")


def synthetic_image(size: int) -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (size, size), (255, 255, 255))
    PIL.ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30))
    return image


def build_inputs(config, processor, problems: list[str]) -> dict:
    vision = config.vision_config
    if processor is not None:
        if processor.image_seq_length != config.image_seq_length:
            problems.append(f"processor image_seq_length {processor.image_seq_length} != config "
                            f"image_seq_length {config.image_seq_length}")
        token_id = getattr(processor, "image_token_id", None)
        if token_id != config.image_token_id:
            problems.append(f"processor image token id {token_id} != config image_token_id {config.image_token_id}")
        if len(processor.tokenizer) > config.vocab_size:
            problems.append(f"tokenizer has {len(processor.tokenizer)} tokens but vocab_size is {config.vocab_size}")
        prompt = processor.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=False)
        prompt = prompt[0] if isinstance(prompt, list) else prompt
        inputs = dict(processor(images=[synthetic_image(vision.image_size)], text=prompt, return_tensors="pt"))
        inputs.pop("token_type_ids", None)
        expected = (getattr(vision, "num_channels", 3), vision.image_size, vision.image_size)
        if tuple(inputs["pixel_values"].shape[1:]) != expected:
            problems.append(f"processor pixel_values {list(inputs['pixel_values'].shape[1:])} != vision tower "
                            f"input {list(expected)}")
        print(f"prompt: {prompt!r}")
        return inputs
    # No processor: a plain id sequence with one image block, avoiding the image token outside the block.
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, config.vocab_size, (16,), generator=generator)
    text[text == config.image_token_id] = (config.image_token_id + 1) % config.vocab_size
    image_block = torch.full((config.image_seq_length,), config.image_token_id)
    input_ids = torch.cat([text[:4], image_block, text[4:]]).unsqueeze(0)
    pixels = torch.randn(1, getattr(vision, "num_channels", 3), vision.image_size, vision.image_size,
                         generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixels}


def check_forward(model, config, inputs: dict, problems: list[str]) -> None:
    print("== forward")
    n_images = inputs["pixel_values"].shape[0]
    n_image_tokens = int((inputs["input_ids"] == config.image_token_id).sum())
    expected = config.image_seq_length * n_images
    print(f"input_ids: {list(inputs['input_ids'].shape)}, pixel_values: {list(inputs['pixel_values'].shape)}, "
          f"image tokens {n_image_tokens} (expected {config.image_seq_length} x {n_images} = {expected})")
    if n_image_tokens != expected:
        problems.append(f"image-token mismatch: the prompt has {n_image_tokens} image tokens, expected "
                        f"image_seq_length {config.image_seq_length} x {n_images} image(s) = {expected}")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    try:
        with torch.inference_mode():
            out = model(**inputs, output_hidden_states=True, use_cache=False)
    except ValueError as error:
        problems.append(f"forward raised ValueError: {error}")
        return
    logits = out.logits.float()
    finite = torch.isfinite(logits)
    print(f"logits: {list(logits.shape)}, max |logit| {logits[finite].abs().max().item() if finite.any() else 'n/a'}")
    tensors = {"logits": out.logits, "image features": out.image_hidden_states}
    # hidden_states[0] is the input embeddings (image features merged in), then one entry per decoder layer.
    for index, hidden in enumerate(out.hidden_states or ()):
        tensors["embeddings" if index == 0 else f"hidden state of layer {index}"] = hidden
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        if n_nan or n_inf:
            problems.append(f"{name}: {n_nan} NaN and {n_inf} Inf values of {tensor.numel()}")


def main(argv=None) -> int:
    args = parse_args(argv)
    # Keep the report readable (loading chatter is not a diagnosis); restored after, for in-process callers.
    verbosity, progress_bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return run(args)
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bar:
            hf_logging.enable_progress_bar()


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    else:
        dtype = DTYPES[args.dtype]
    folder = Path(args.model)
    try:
        config, model = load(folder, device, dtype)
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    problems: list[str] = []
    warnings: list[str] = []  # printed, but do not fail the check
    print_summary(config, model, device)
    check_weights(model, config, problems, warnings)
    processor = load_processor(folder, problems)
    try:
        inputs = build_inputs(config, processor, problems)
    except ValueError as error:  # the processor refused the prompt/image: report it, there is nothing to run
        problems.append(f"processor failed on the synthetic prompt: {error}")
    else:
        check_forward(model, config, inputs, problems)

    print("== result")
    for warning in warnings:
        print(f"WARNING: {warning}")
    if problems:
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print(f"{len(problems)} problem(s) found")
        return 1
    print("OK: no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
