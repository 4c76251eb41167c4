"""Helpers for the chat-session and web-demo tests: a tiny random-weight model folder, synthetic-task images, greedy
reference replies computed the plain way (processor chat template + `generate`, no demo code involved).
"""

import random
from pathlib import Path

import PIL.Image
import torch

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from processing.processors import build_processor
from processing.synthetic import render_image, sample_scene
from processing.tokenizers import load_default_tokenizer


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


def save_imported_qwen3_model(folder: Path, work: Path, seed: int = 0) -> Path:
    """A checkpoint of the other kind the project makes: a (tiny, random) Qwen3 decoder and SigLIP tower imported
    with `processing.conversion.assembly.import_qwen3`, Qwen's own tokenizer kept (ChatML and vision specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel,
    )

    from processing.conversion.assembly import import_qwen3

    qwen_dir, vision_dir = work / "qwen3", work / "siglip"
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["What color is the circle? A red square and two blue circles."] * 8, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(qwen_dir)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    decoder = Qwen3ForCausalLM(config)
    with torch.no_grad():  # wide weights, so replies depend on the input (see save_tiny_model)
        for parameter in decoder.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3)
    decoder.save_pretrained(qwen_dir)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=16)
    SiglipVisionModel(vision).save_pretrained(vision_dir)
    model, processor = import_qwen3(qwen_dir, vision_dir, projector_type="mlp", seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
