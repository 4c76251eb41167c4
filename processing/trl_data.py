"""MiniMind-V training through TRL's ``SFTTrainer``: row conversion, label masking, LoRA targets, MoE balance loss.

* :class:`TRLChatDataset` reads the project's rows (``conversations`` + ``image``/``images``/``image_bytes``, with a
  literal ``<image>`` per image) with the same validation as :mod:`processing.data` and yields TRL's multimodal
  format: ``{"messages": [{"role", "content": [{"type": "image"}, {"type": "text", "text": ...}]}], "images": [PIL]}``.
  Each ``<image>`` becomes one ``{"type": "image"}`` item *where it stood*, so the number of image items always equals
  the number of images (TRL's own string-content path would instead put every image before the first user text).
* :class:`MiniMindVTRLCollator` is TRL's ``DataCollatorForVisionLanguageModeling`` with assistant-only labels (our
  chat template carries ``{% generation %}`` markers) plus a second mask for the pad, image and vision start/end ids:
  TRL leaves image placeholders in the labels, and we never want a prediction target there even if a template change
  put one inside a generation block.
* :func:`lora_config` targets the decoder's linear layers only and fully trains the projector.
* :class:`MiniMindVSFTTrainer` adds the MoE balance loss that TRL's fused LM head path drops (it only knows
  ``output_router_logits`` models; ours returns ``aux_loss`` from the inner model).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from torch.utils.data import Dataset
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from .labels import IGNORE_INDEX
from .rows import IMAGE_PLACEHOLDER, PLACEHOLDER_MISMATCH, TEMPLATE_ERROR, TOO_LONG, DataStats, RowError, decode_image
from .rows import parse_rows

logger = logging.getLogger(__name__)

# Decoder linear layers (attention and every MLP/expert projection, not the MoE router `mlp.gate`). PEFT fullmatches
# a string `target_modules` against full module names, so the vision tower's q/k/v/o projections stay untouched.
DECODER_LORA_TARGETS = (
    r"model\.language_model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(.*\.)?(gate_proj|up_proj|down_proj))"
)
PROJECTOR_MODULE = "multi_modal_projector"
LENGTH_CHUNK = 256
# How many following rows __getitem__ tries when a row's image fails to decode mid-training.
MAX_DECODE_FALLBACKS = 16


def to_trl_messages(messages: list[dict]) -> list[dict]:
    """String content with ``<image>`` markers -> TRL content lists, one unfilled image item per marker, in place."""
    out = []
    for message in messages:
        items = []
        for k, piece in enumerate(message["content"].split(IMAGE_PLACEHOLDER)):
            if k > 0:
                items.append({"type": "image"})
            if piece:
                items.append({"type": "text", "text": piece})
        out.append({"role": message["role"], "content": items})
    return out


class TRLChatDataset(Dataset):
    """Validated chat rows in TRL's conversational vision format; images are decoded on access.

    Hand ``to_hf_dataset()`` to ``SFTTrainer``.

    Args:
        path: .jsonl or .parquet file of project rows.
        image_root: folder that relative image paths resolve against (default: the data file's folder).
        processor: needed only with ``max_length``, to count tokens through the chat template.
        max_length: rows with more tokens (images expanded) are dropped at load. Rows are never truncated: a cut
            could split an image block, which the model rejects, or drop a reply's ``<|im_end|>``.
    """

    def __init__(self, path, image_root=None, processor=None, max_length: int | None = None):
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else self.path.resolve().parent
        self.stats = DataStats(source=str(self.path))
        parsed = [(where, to_trl_messages(messages), refs)
                  for where, messages, refs in parse_rows(self.path, self.image_root, self.stats)]
        if max_length is not None:
            if processor is None:
                raise ValueError("max_length needs the processor to count tokens")
            parsed = self._drop_too_long(parsed, processor, max_length)
        self.rows = parsed
        self.stats.kept = len(self.rows)
        logger.info("data %s", self.stats.summary())
        for reason, shown in self.stats.examples.items():
            logger.info("  skipped (%s), e.g. %s", reason, "; ".join(shown))

    def _drop_too_long(self, parsed, processor, max_length: int):
        stand_in = PIL.Image.new("RGB", (1, 1))  # only the token count matters; the processor expands each image
        kept = []
        for start in range(0, len(parsed), LENGTH_CHUNK):
            chunk = parsed[start : start + LENGTH_CHUNK]
            for (where, messages, refs), n_tokens in zip(chunk, self._token_counts(chunk, processor, stand_in)):
                if isinstance(n_tokens, RowError):
                    self.stats.skip(n_tokens.reason, where, str(n_tokens))
                elif n_tokens > max_length:
                    self.stats.skip(TOO_LONG, where, f"{n_tokens} tokens > max_length={max_length}")
                else:
                    kept.append((where, messages, refs))
        return kept

    @staticmethod
    def _token_counts(chunk, processor, stand_in) -> list:
        """Token count per row (images expanded), or a RowError for a row the template/processor rejects."""
        conversations = [_fill_images(messages, [stand_in] * len(refs)) for _, messages, refs in chunk]
        try:
            encoded = processor.apply_chat_template(
                conversations, tokenize=True, return_dict=True, processor_kwargs={"padding": True}
            )
        except Exception as error:  # one bad conversation fails the batch: redo row by row to name it
            if len(chunk) == 1:
                reason = PLACEHOLDER_MISMATCH if "placeholder" in str(error) else TEMPLATE_ERROR
                return [RowError(reason, str(error)[:200])]
            return [TRLChatDataset._token_counts([row], processor, stand_in)[0] for row in chunk]
        return [int(sum(mask)) for mask in encoded["attention_mask"]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.rows):
            raise IndexError(index)  # also ends iter() over the dataset (TRL peeks at the first row that way)
        # A file can go bad after validation (or be truncated); one bad image must not end a long run, so fall back
        # to the following rows and count the skip.
        for attempt in range(min(MAX_DECODE_FALLBACKS, len(self.rows))):
            where, messages, refs = self.rows[(index + attempt) % len(self.rows)]
            try:
                images = [decode_image(ref) for ref in refs]
            except RowError as error:
                self.stats.skip(error.reason, where, str(error))
                logger.warning("skipping %s: %s", where, error)
                continue
            # Fresh dicts every time: collators and TRL helpers add keys to what they get.
            return {"messages": copy.deepcopy(messages), "images": images}
        raise RuntimeError(f"{MAX_DECODE_FALLBACKS} consecutive rows from {index} have undecodable images")

    def to_hf_dataset(self):
        """A `datasets.Dataset` view for `SFTTrainer` (which accepts nothing else).

        It stores only row indices; a transform looks each row up here on access. So images stay lazy, the
        messages keep their exact Python structure (no Arrow schema merging of content items), and a bad image
        still falls back to the next row instead of failing the epoch.
        """
        import datasets

        return datasets.Dataset.from_dict({"row": list(range(len(self)))}).with_transform(_RowLookup(self))


class _RowLookup:
    """`with_transform` callable (a class, not a closure, so DataLoader workers can pickle it)."""

    def __init__(self, rows: TRLChatDataset):
        self.rows = rows

    def __call__(self, batch: dict) -> dict:
        items = [self.rows[index] for index in batch["row"]]
        return {"messages": [item["messages"] for item in items], "images": [item["images"] for item in items]}


def _fill_images(messages: list[dict], images: list) -> list[dict]:
    """Put `images`, in order, into the unfilled image items (what TRL's prepare_multimodal_messages does)."""
    remaining = iter(images)
    return [
        {**m, "content": [{**item, "image": next(remaining)} if item["type"] == "image" else item
                          for item in m["content"]]}
        for m in messages
    ]


@dataclass
class MiniMindVTRLCollator(DataCollatorForVisionLanguageModeling):
    """TRL's VLM collator with assistant-only labels and pad/image/vision-start/end ids never labelled.

    Build it with :func:`build_collator`. Rows are padded on the right and never truncated (``max_length`` stays None:
    :class:`TRLChatDataset` drops rows that are too long instead).
    """

    assistant_only_loss: bool = True
    unlabelled_ids: tuple[int, ...] = field(default_factory=tuple)

    def torch_call(self, examples: list[dict]) -> dict:
        batch = super().torch_call(examples)
        if self.unlabelled_ids:
            ids = torch.tensor(self.unlabelled_ids, device=batch["input_ids"].device)
            batch["labels"][torch.isin(batch["input_ids"], ids)] = IGNORE_INDEX
        return batch


def build_collator(processor, assistant_only_loss: bool = True) -> MiniMindVTRLCollator:
    tokenizer = processor.tokenizer
    ids = {tokenizer.pad_token_id, processor.image_token_id,
           getattr(processor, "vision_start_token_id", None), getattr(processor, "vision_end_token_id", None)}
    return MiniMindVTRLCollator(
        processor=processor, max_length=None, assistant_only_loss=assistant_only_loss,
        unlabelled_ids=tuple(sorted(i for i in ids if i is not None)),
    )


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.05):
    """LoRA on the decoder's linear layers; the projector trains in full (saved with the adapter); vision frozen."""
    from peft import LoraConfig  # optional dependency, only for --lora

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=DECODER_LORA_TARGETS, modules_to_save=[PROJECTOR_MODULE],
    )


def parameter_counts(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """{group: {"trainable", "total"}} for vision / projector / decoder / lora / all (tied tensors counted once).

    Works on plain and PEFT-wrapped models; a PEFT `modules_to_save` copy counts under its part.
    """
    groups = ("vision", "projector", "decoder", "lora", "all")
    counts = {g: {"trainable": 0, "total": 0} for g in groups}
    for name, param in model.named_parameters():
        if "lora_" in name:
            group = "lora"
        elif "vision_tower" in name:
            group = "vision"
        elif PROJECTOR_MODULE in name:
            group = "projector"
        else:
            group = "decoder"  # language_model.* and lm_head (tied to the embeddings)
        for key in (group, "all"):
            counts[key]["total"] += param.numel()
            counts[key]["trainable"] += param.numel() if param.requires_grad else 0
    return counts


class MiniMindVSFTTrainer(SFTTrainer):
    """`SFTTrainer` that also adds MiniMind-V's MoE balance loss.

    TRL's fused LM head runs the inner `MiniMindVModel` and builds the loss itself, so the `aux_loss` our own forward
    would add is lost (TRL only handles models with `output_router_logits`). A forward hook on the inner model keeps
    the latest `aux_loss`; it is added like TRL adds its own: divided by the accumulation steps when the token loss is
    normalised over the whole accumulated batch. Dense models have no `aux_loss`, and nothing changes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._aux_loss = None
        inner = self._unwrapped().model
        inner.register_forward_hook(self._keep_aux_loss)

    def _unwrapped(self):
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _keep_aux_loss(self, module, inputs, output):
        self._aux_loss = getattr(output, "aux_loss", None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._aux_loss = None
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        aux, self._aux_loss = self._aux_loss, None
        if aux is None or not model.training:
            return result
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        if return_outputs:
            loss, outputs = result
            return loss + aux / steps, outputs
        return result + aux / steps


__all__ = [
    "DECODER_LORA_TARGETS", "MiniMindVSFTTrainer", "MiniMindVTRLCollator", "TRLChatDataset", "build_collator",
    "lora_config", "parameter_counts", "to_trl_messages",
]
