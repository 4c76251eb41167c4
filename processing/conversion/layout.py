"""Where MiniMind-V keeps its parts in a state dict: the key prefixes every conversion maps to and from."""

DECODER_PREFIX = "model.language_model."  # + the Qwen3 decoder's keys without their "model." prefix
LM_HEAD = "lm_head.weight"  # absent when tied to the embeddings
TOWER_PREFIX = "model.vision_tower."
PROJECTOR_PREFIX = "model.multi_modal_projector."
EMBEDDINGS = DECODER_PREFIX + "embed_tokens.weight"

__all__ = ["DECODER_PREFIX", "EMBEDDINGS", "LM_HEAD", "PROJECTOR_PREFIX", "TOWER_PREFIX"]
