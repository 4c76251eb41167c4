"""MiniMind-V: vision tower -> projector -> placeholder merge -> MiniMind decoder, as transformers models.

`MiniMindVModel` (AutoModel) embeds the prompt, replaces each image placeholder embedding with one projected image
feature (LLaVA's get_image_features -> placeholder mask -> masked_scatter, here a gather) and runs its
`language_model`, a `MiniMindModel`, on `inputs_embeds`; it returns hidden states, so trainers that call the inner
model (TRL's fused LM head) and serving engines (vLLM's Transformers backend) see the images.
`MiniMindVForConditionalGeneration` (AutoModelForImageTextToText / AutoModelForCausalLM) adds the LM head, the loss
and `generate`. Remote code: imports only torch, transformers and files of this folder.
"""

import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging

from .attention import MiniMindRotaryEmbedding
from .compat import cache_field, output_cache, pop_cache, prepare_cache_arg
from .configuration_minimind_v import MiniMindVConfig
from .fast_generate import fast_generate, fast_generate_settings
from .model_card import render_model_card
from .modeling_minimind import (
    MiniMindCausalLMOutputWithPast, MiniMindModel, MiniMindModelOutputWithPast, _flag, check_generate_inputs,
    lm_head_outputs,
)
from .projector import MiniMindVResampler, build_projector
from .vision import patch_features

logger = logging.get_logger(__name__)


@dataclass
class MiniMindVModelOutputWithPast(MiniMindModelOutputWithPast):
    """Decoder output plus this forward's images: `image_hidden_states`, the projected features
    [n_images, image_seq_length, hidden], and `image_outputs`, the vision tower's output (see get_image_features)."""

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class MiniMindVCausalLMOutputWithPast(MiniMindCausalLMOutputWithPast):
    """`loss` already includes `aux_loss` (the weighted MoE balance loss) when both are computed."""

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


class MiniMindVPreTrainedModel(PreTrainedModel):
    config_class = MiniMindVConfig
    config: MiniMindVConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniMindDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @property
    def _can_compile_fullgraph(self) -> bool:
        # MoE dispatch reads expert sizes on the host; the dense model compiles without graph breaks.
        return self.config.text_config.num_experts == 0

    # Written into config.json on save, so every Auto class loads this checkpoint, whichever class was saved.
    _auto_map = {
        "AutoConfig": "configuration_minimind_v.MiniMindVConfig",
        "AutoModel": "modeling_minimind_v.MiniMindVModel",
        "AutoModelForCausalLM": "modeling_minimind_v.MiniMindVForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_minimind_v.MiniMindVForConditionalGeneration",
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus all Auto-class entries and a model card (kept if one exists)."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._auto_map}
        # FSDP2's fully_shard swaps the model's class for a subclass defined in torch; saved as that, the folder
        # would carry torch's FSDP source as its remote code. Save as the model's own class (the first one in the
        # MRO that is not torch's), then put the runtime class back.
        runtime_class = type(self)
        own_class = next(c for c in runtime_class.__mro__ if not c.__module__.startswith("torch."))
        self.__class__ = own_class
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__class__ = runtime_class
        card_path = os.path.join(save_directory, "README.md")
        if not os.path.exists(card_path):
            self._write_model_card(card_path, repo=str(save_directory))
        return result

    def _write_model_card(self, path: str, repo: str):
        decoder = sum(p.numel() for name, p in self.named_parameters() if "language_model." in name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render_model_card(self.config, decoder, self.num_parameters(), repo=repo))

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload MiniMind-V model", private: bool | None = None,
                    token: str | None = None, revision: str | None = None, create_pr: bool = False,
                    max_shard_size: int | str = "5GB", **kwargs):
        """Save into a temporary folder (weights, code, config, model card) and upload it as one commit."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp_dir:
            self.save_pretrained(tmp_dir, max_shard_size=max_shard_size)
            self._write_model_card(os.path.join(tmp_dir, "README.md"), repo=repo_id)  # name the real repo
            return api.upload_folder(repo_id=repo_id, folder_path=tmp_dir, commit_message=commit_message,
                                     revision=revision, create_pr=create_pr)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading materialises fresh parameters (requires_grad=True): re-apply the configured vision freeze.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) with output_loading_info
        if model.config.freeze_vision_tower:
            model.get_vision_tower().requires_grad_(False)
        with torch.no_grad():  # NaN/Inf weights make every output meaningless: say so once, at load
            bad = [name for name, p in model.named_parameters()
                   if p.is_floating_point() and p.device.type != "meta" and not torch.isfinite(p).all()]
        if bad:
            logger.warning("%d weight tensor(s) of this checkpoint hold NaN/Inf (e.g. %s): its outputs are "
                           "meaningless; run scripts/diagnose.py on it", len(bad), ", ".join(bad[:3]))
        return loaded

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MiniMindRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        elif isinstance(module, MiniMindVResampler):
            init.normal_(module.queries, mean=0.0, std=self.config.text_config.initializer_range)


class MiniMindVModel(MiniMindVPreTrainedModel):
    def __init__(self, config: MiniMindVConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(config)
        self.language_model = MiniMindModel(config.text_config)
        if config.freeze_vision_tower:
            self.vision_tower.requires_grad_(False)
        self.post_init()

    def get_vision_tower(self):
        return self.vision_tower

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        vision = self.config.vision_config
        expected = (getattr(vision, "num_channels", 3), vision.image_size, vision.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape [num_images, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(channels, height, width of the vision tower), got {list(pixel_values.shape)}"
            )

    def get_image_features(self, pixel_values: torch.Tensor, return_dict: bool | None = None,
                           output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                           **kwargs):
        """Images [n, C, H, W] -> the vision tower's output with `pooler_output` = the projected features
        [n, image_seq_length, hidden] (one entry per image), as a `BaseModelOutputWithPooling`, or a tuple with
        `return_dict=False`."""
        self._check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        # A frozen tower needs no graph: run it without autograd to save activation memory.
        track_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(track_grad):
            features, tower_out = patch_features(
                self.vision_tower, pixel_values, self.config.vision_feature_layer, self.config.num_patches,
                output_hidden_states=bool(output_hidden_states), output_attentions=bool(output_attentions),
            )
        output = BaseModelOutputWithPooling(
            last_hidden_state=tower_out.last_hidden_state,
            pooler_output=self.multi_modal_projector(features),  # [n, image_seq_length, hidden]
            hidden_states=tower_out.hidden_states if output_hidden_states else None,
            attentions=tower_out.attentions if output_attentions else None,
        )
        return output if _flag(return_dict, self.config, "return_dict") else output.to_tuple()

    def get_placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Boolean [b, s] mask of image placeholder positions."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embed = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embed).all(-1)

    @staticmethod
    def _images_already_cached(placeholder_mask, past_key_values) -> bool:
        """A continuation step (the cache holds earlier tokens) whose new tokens hold no image placeholder: the
        images were merged when their placeholders were first processed, so `pixel_values` has nothing to fill."""
        if torch.compiler.is_compiling() or past_key_values is None:
            return False
        return int(past_key_values.get_seq_length()) > 0 and not bool(placeholder_mask.any())

    def check_image_tokens(self, placeholder_mask: torch.Tensor, n_images: int | None,
                           seq_len: int | None = None) -> None:
        """The prompt's image placeholders must match the images' features one to one (`n_images` None: no
        pixel_values). Reads the mask on the host, so it runs only outside compiled code."""
        n_tokens = int(placeholder_mask.sum())
        if n_images is None:
            if n_tokens:
                raise ValueError(f"The input has {n_tokens} image tokens (id {self.config.image_token_id}) "
                                 "but no pixel_values were given")
            return
        seq_len = self.config.image_seq_length if seq_len is None else seq_len
        if n_tokens != n_images * seq_len:
            raise ValueError(
                f"Image features and image tokens do not match: the input has {n_tokens} image tokens "
                f"(id {self.config.image_token_id}) but {n_images} image(s) x {seq_len} features = "
                f"{n_images * seq_len} image features"
            )

    def merge_image_features(self, inputs_embeds, placeholder_mask, image_features, check: bool = True) -> torch.Tensor:
        """Write image features, in order, into the placeholder positions (vectorised, no host sync). `check`: count
        the placeholders against the features first (a host sync; skipped when compiling, or by a caller that has
        checked them, such as a CUDA-graph capture)."""
        if check and not torch.compiler.is_compiling():
            self.check_image_tokens(placeholder_mask, image_features.shape[0], image_features.shape[1])
        # masked_scatter's semantics (the k-th placeholder takes the k-th feature row) as a gather + where: the
        # backward of masked_scatter waits for the GPU (it counts the mask on the host), a gather's does not.
        features = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds.dtype)  # [n * seq, h]
        if features.shape[0] == 0:
            return inputs_embeds
        index = (placeholder_mask.reshape(-1).cumsum(0) - 1).clamp(min=0).view(placeholder_mask.shape)  # [b, s]
        return torch.where(placeholder_mask.unsqueeze(-1), features[index], inputs_embeds)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MiniMindVModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        past_key_values = pop_cache(past_key_values, kwargs)
        output_attentions = _flag(output_attentions, self.config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, self.config, "output_hidden_states")
        return_dict = _flag(return_dict, self.config, "return_dict")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(self.language_model._checked_ids(input_ids))

        image_outputs = None
        # Embeddings without images come from a caller that embedded the prompt itself (a serving engine such as
        # vLLM merges the image features before calling): there are no placeholders left to look for.
        find_placeholders = pixel_values is not None or input_ids is not None
        placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds) if find_placeholders else None
        if pixel_values is not None and self._images_already_cached(placeholder_mask, past_key_values):
            pixel_values = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, return_dict=True,
                                                    output_hidden_states=output_hidden_states is not False,
                                                    output_attentions=output_attentions)
            inputs_embeds = self.merge_image_features(inputs_embeds, placeholder_mask, image_outputs.pooler_output)
        elif find_placeholders and not torch.compiler.is_compiling() and \
                (past_key_values is None or past_key_values.get_seq_length() == 0):
            self.check_image_tokens(placeholder_mask, None)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
        )
        output = MiniMindVModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **cache_field(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
            image_hidden_states=image_outputs.pooler_output if image_outputs is not None else None,
            image_outputs=image_outputs,
        )
        return output if return_dict else output.to_tuple()


class MiniMindVForConditionalGeneration(MiniMindVPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: MiniMindVConfig):
        super().__init__(config)
        self.model = MiniMindVModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_vision_tower(self):
        return self.model.vision_tower

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        return self.model.get_image_features(pixel_values, **kwargs)

    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def multi_modal_projector(self):
        return self.model.multi_modal_projector

    @property
    def language_model(self):
        return self.model.language_model

    def generate(self, *args, **kwargs):
        """transformers' `generate`; with `cache_implementation="static"` and plain greedy/sampled decoding of the
        dense model, decode steps run as one compiled CUDA graph each (see fast_generate.py)."""
        check_generate_inputs(self, args, kwargs)  # a bad prompt is a named error, not an IndexError deep inside
        settings = None if args else fast_generate_settings(self, kwargs)
        if settings is None:
            return super().generate(*args, **kwargs)
        return fast_generate(self, settings)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, past_key_values=None,
                                      attention_mask=None, inputs_embeds=None, is_first_iteration=False, cache=None,
                                      **kwargs):
        """transformers' preparation, except that images are kept whenever the cache does not hold the prompt yet.

        generate drops `pixel_values` after the first iteration, and an assistant model (assisted/speculative
        decoding) prefills as a non-first iteration: without this its prefill would see image tokens without images.
        The cache is accepted under both names (`generate` checks the name it uses against this signature).
        """
        cache = pop_cache(past_key_values, {"cache": cache})
        inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, attention_mask=attention_mask,
            inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **prepare_cache_arg(cache), **kwargs,
        )
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is not None and inputs.get("pixel_values") is None and \
                (cache is None or int(cache.get_seq_length()) == 0):
            inputs["pixel_values"] = pixel_values
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MiniMindVCausalLMOutputWithPast | tuple:
        return_dict = _flag(return_dict, self.config, "return_dict")
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=pop_cache(past_key_values, kwargs), inputs_embeds=inputs_embeds,
            use_cache=use_cache, return_dict=True, **kwargs,
        )
        logits, loss, aux_loss = lm_head_outputs(
            self, outputs.last_hidden_state, labels, logits_to_keep, outputs.router_logits, attention_mask,
            self.config.text_config.vocab_size, **kwargs,
        )
        output = MiniMindVCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_field(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            aux_loss=aux_loss,
            router_logits=outputs.router_logits,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
        )
        return output if return_dict else output.to_tuple()


MiniMindVConfig.register_for_auto_class()
MiniMindVModel.register_for_auto_class("AutoModel")
MiniMindVForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["MiniMindVForConditionalGeneration", "MiniMindVModel", "MiniMindVPreTrainedModel"]
