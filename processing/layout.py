"""Where MiniMind-V keeps its parts: the module names and state-dict key prefixes that training (which parts train)
and checkpoint conversion (which keys map where) both rely on."""

VISION_MODULE = "vision_tower"
PROJECTOR_MODULE = "multi_modal_projector"
DECODER_MODULE = "language_model"
LM_HEAD_MODULE = "lm_head"  # tied to the decoder's embeddings unless the config unties it

TOWER_PREFIX = f"model.{VISION_MODULE}."
PROJECTOR_PREFIX = f"model.{PROJECTOR_MODULE}."
DECODER_PREFIX = f"model.{DECODER_MODULE}."  # + the Qwen3 decoder's keys without their "model." prefix
LM_HEAD = f"{LM_HEAD_MODULE}.weight"  # absent from a tied checkpoint
EMBEDDINGS = DECODER_PREFIX + "embed_tokens.weight"

__all__ = [
    "DECODER_MODULE", "DECODER_PREFIX", "EMBEDDINGS", "LM_HEAD", "LM_HEAD_MODULE", "PROJECTOR_MODULE",
    "PROJECTOR_PREFIX", "TOWER_PREFIX", "VISION_MODULE",
]
