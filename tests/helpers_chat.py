"""Helpers for the chat-session and web-demo tests: a tiny random-weight model folder, synthetic-task images, greedy
reference replies computed the plain way (processor chat template + `generate`, no demo code involved).
"""

import random
from pathlib import Path

import PIL.Image
import torch

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from processing.processor_builder import build_processor
from processing.synthetic import render_image, sample_scene
from processing.tokenizer import load_default_tokenizer


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """The tiny preset with the shipped tokenizer, model + processor saved into one folder (nothing downloaded)."""
    tokenizer = load_default_tokenizer()
    config = MiniMindVConfig.from_preset("tiny", vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = MiniMindVForConditionalGeneration(config).eval()
    # Default init is so small that a random model repeats one token whatever the input; wider weights make the
    # reply depend on the image and the text, so comparing replies shows the right inputs reached the model.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    build_processor(tokenizer, config.vision_config, config.image_seq_length).save_pretrained(folder)
    return folder


def shapes_image(seed: int = 0, size: int = 48) -> PIL.Image.Image:
    """An image of the synthetic shapes task."""
    return render_image(sample_scene(random.Random(seed)), size)


def greedy_reference(model, processor, messages: list[dict], max_new_tokens: int) -> str:
    """The reply plain greedy `generate` gives for `messages` (no streaming, no sanitising)."""
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def user(text: str | None = None, images=()) -> dict:
    content = [{"type": "image", "image": image} for image in images]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}
