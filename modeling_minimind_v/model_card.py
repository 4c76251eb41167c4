"""The README.md model card written next to a saved MiniMind-V checkpoint (and uploaded by `push_to_hub`)."""

from .compat import TRANSFORMERS_RANGE
from .configuration_minimind_v import MiniMindVConfig

CARD_TEMPLATE = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- minimind-v
- vision-language
- custom_code
---

# MiniMind-V

A small vision-language model: a frozen {vision_type} vision tower ({image_size} px, patch {patch_size}), a
`{projector_type}` projector and a Qwen3-style MiniMind decoder ({layers} layers, hidden {hidden},
{heads} attention heads / {kv_heads} KV heads{moe}). Each image becomes {seq_len} tokens in the prompt.
Decoder parameters: {decoder_params}; total parameters: {total_params}.

The modeling code ships with the checkpoint, so load it with `trust_remote_code=True` (it needs
`transformers{transformers_range}` and PyTorch):

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Describe the image."}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.open("image.png")], text=prompt, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=64)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Or through the pipeline:

```python
from transformers import pipeline

pipe = pipeline("image-text-to-text", model="{repo}", trust_remote_code=True)
```
"""


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def render_model_card(config: MiniMindVConfig, decoder_params: int, total_params: int, repo: str) -> str:
    text, vision = config.text_config, config.vision_config
    moe = ""
    if text.num_experts > 0:
        moe = (f", MoE with {text.num_experts} routed experts (top-{text.num_experts_per_tok}) and "
               f"{text.n_shared_experts} shared")
    return CARD_TEMPLATE.format(
        vision_type=vision.model_type, image_size=vision.image_size, patch_size=vision.patch_size,
        projector_type=config.projector_type, layers=text.num_hidden_layers, hidden=text.hidden_size,
        heads=text.num_attention_heads, kv_heads=text.num_key_value_heads, moe=moe,
        seq_len=config.image_seq_length, decoder_params=_millions(decoder_params),
        total_params=_millions(total_params), repo=repo, transformers_range=TRANSFORMERS_RANGE,
    )
