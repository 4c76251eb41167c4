"""MiniMind-V: vision tower -> projector -> placeholder merge -> MiniMind decoder, as transformers models.

`MiniMindVModel` (AutoModel) embeds the prompt, replaces each image placeholder embedding with one projected image
feature and runs the decoder; it returns hidden states, so trainers that call the inner model (TRL's fused LM head)
still see the images. `MiniMindVForConditionalGeneration` (AutoModelForImageTextToText / AutoModelForCausalLM) adds
the LM head, the loss and `generate`. Remote code: imports only torch, transformers and files of this folder.
"""

import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .compat import cache_field, output_cache, pop_cache
from .configuration_minimind_v import MiniMindVConfig
from .fast_generate import fast_generate, fast_generate_settings
from .language_model import MiniMindRotary, MiniMindTextModel
from .loss import chunked_causal_lm_loss
from .model_card import render_model_card
from .projector import MiniMindVResampler, build_projector


@dataclass
class MiniMindVModelOutputWithPast(BaseModelOutputWithPast):
    """Decoder output plus the MoE balance loss and the projected image features of this forward."""

    aux_loss: torch.FloatTensor | None = None
    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class MiniMindVCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`loss` already includes `aux_loss` (the MoE balance loss) when labels are given."""

    aux_loss: torch.FloatTensor | None = None
    image_hidden_states: torch.FloatTensor | None = None


@torch.compiler.disable  # a data-dependent check; runs eagerly even inside a compiled forward
def _is_all_ones(mask: torch.Tensor) -> bool:
    return bool(mask.all())


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
        return not self.config.use_moe

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
        result = super().save_pretrained(save_directory, *args, **kwargs)
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
        model = super().from_pretrained(*args, **kwargs)
        vision_tower = model.get_submodule(f"{cls.base_model_prefix}.vision_tower" if hasattr(model, "model")
                                           else "vision_tower")
        if model.config.freeze_vision_tower:
            vision_tower.requires_grad_(False)
        return model

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MiniMindRotary):
            init.copy_(module.inv_freq, module.compute_inv_freq())
        elif isinstance(module, MiniMindVResampler):
            init.normal_(module.queries, mean=0.0, std=self.config.initializer_range)


class MiniMindVModel(MiniMindVPreTrainedModel):
    def __init__(self, config: MiniMindVConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(config)
        self.language_model = MiniMindTextModel(config)
        if config.freeze_vision_tower:
            self.vision_tower.requires_grad_(False)
        self.post_init()

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

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n_images, C, H, W] -> projected features [n_images, image_seq_length, hidden]."""
        self._check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        # A frozen tower needs no graph: run it without autograd to save activation memory.
        track_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        layer = self.config.vision_feature_layer
        with torch.set_grad_enabled(track_grad):
            out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=layer != -1)
            features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        # Drop leading non-patch tokens (CLIP's class token); SigLIP has none.
        features = features[:, features.shape[1] - self.config.num_patches:]  # [n, patches, vision_hidden]
        return self.multi_modal_projector(features)

    def get_placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Boolean [b, s] mask of image placeholder positions."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embed = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embed).all(-1)

    def merge_image_features(self, inputs_embeds, placeholder_mask, image_features) -> torch.Tensor:
        """Write image features, in order, into the placeholder positions (one vectorised masked_scatter)."""
        if not torch.compiler.is_compiling():
            n_tokens = int(placeholder_mask.sum())
            n_images, seq_len = image_features.shape[:2]
            if n_tokens != n_images * seq_len:
                raise ValueError(
                    f"Image features and image tokens do not match: the input has {n_tokens} image tokens "
                    f"(id {self.config.image_token_id}) but {n_images} image(s) x {seq_len} features = "
                    f"{n_images * seq_len} image features"
                )
        mask = placeholder_mask.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, image_features.to(inputs_embeds.dtype))

    @staticmethod
    def _positions(attention_mask, inputs_embeds, past_key_values) -> torch.Tensor:
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        seq_len = inputs_embeds.shape[1]
        if attention_mask is not None and attention_mask.ndim == 2:
            # Count only real tokens, so left-padded rows start at position 0 like unpadded ones.
            positions = attention_mask.long().cumsum(-1) - 1
            return positions.clamp(min=0)[:, -seq_len:]
        return (torch.arange(seq_len, device=inputs_embeds.device) + past).unsqueeze(0)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MiniMindVModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        past_key_values = pop_cache(past_key_values, kwargs)
        for key in ("return_dict", "output_attentions"):  # accepted for API compatibility (PEFT passes them)
            kwargs.pop(key, None)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        output_hidden_states = bool(output_hidden_states)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds)
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values)
            inputs_embeds = self.merge_image_features(inputs_embeds, placeholder_mask, image_features)
        elif not torch.compiler.is_compiling() and (past_key_values is None or past_key_values.get_seq_length() == 0):
            if bool(placeholder_mask.any()):
                raise ValueError(
                    f"The input has {int(placeholder_mask.sum())} image tokens (id {self.config.image_token_id}) "
                    "but no pixel_values were given"
                )

        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            position_ids = self._positions(attention_mask, inputs_embeds, past_key_values)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 and _is_all_ones(attention_mask):
            # Nothing is padded: a pure causal mask lets sdpa pick its flash kernel instead of a masked one.
            attention_mask = None

        hidden_states, all_hidden, aux_loss = self.language_model(
            inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, output_hidden_states=output_hidden_states, **kwargs,
        )
        return MiniMindVModelOutputWithPast(
            last_hidden_state=hidden_states,
            **cache_field(past_key_values if use_cache else None),
            hidden_states=all_hidden,
            aux_loss=aux_loss,
            image_hidden_states=image_features,
        )


class MiniMindVForConditionalGeneration(MiniMindVPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: MiniMindVConfig):
        super().__init__(config)
        self.model = MiniMindVModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values)

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
        settings = None if args else fast_generate_settings(self, kwargs)
        if settings is None:
            return super().generate(*args, **kwargs)
        return fast_generate(self, settings)

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
        **kwargs,
    ) -> MiniMindVCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=pop_cache(past_key_values, kwargs), inputs_embeds=inputs_embeds,
            use_cache=use_cache, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        loss = logits = None
        if labels is not None and self.training and isinstance(logits_to_keep, int) and logits_to_keep == 0:
            # Training: loss straight from hidden states at labelled positions, no full-vocabulary logits.
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels,
                                          num_items_in_batch=kwargs.get("num_items_in_batch"))
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep, :])
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if loss is not None:
            if outputs.aux_loss is not None:
                loss = loss + outputs.aux_loss
        return MiniMindVCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_field(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            aux_loss=outputs.aux_loss,
            image_hidden_states=outputs.image_hidden_states,
        )


MiniMindVConfig.register_for_auto_class()
MiniMindVModel.register_for_auto_class("AutoModel")
MiniMindVForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["MiniMindVForConditionalGeneration", "MiniMindVModel", "MiniMindVPreTrainedModel"]
