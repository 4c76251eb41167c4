"""Data processing for minimind-v: synthetic task, tokenizer, image processing and chat formatting."""

from modeling_minimind_v.processing_minimind_v import DEFAULT_CHAT_TEMPLATE, MiniMindVProcessor
from .processor_builder import build_image_processor, build_processor
