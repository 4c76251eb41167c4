"""TRL SFT (+ LoRA) for MiniMind-V: row conversion, label masking, TRL's fused loss path, LoRA freezing and the merged
checkpoint (processing/training/trl.py, run by scripts/train_sft_trl.py). Tiny preset, 16 synthetic rows."""

import json

import pytest
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from modeling_minimind_v import MiniMindVForConditionalGeneration
from processing.labels import IGNORE_INDEX
from processing.processors import build_processor
from processing.rows import parse_row
from processing.synthetic import make_dataset
from processing.tokenizers import load_default_tokenizer
from processing.training.config import CONFIG_FILE, TRL, TrainConfig, parse_train_args
from processing.training.loading import load_model_and_processor
from processing.training.parts import parameter_report
from processing.training.trl import (
    TRLChatDataset, build_collator, build_trainer, save_outputs, sft_config,
)


def _save_tiny(folder, seed=0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = MiniMindVForConditionalGeneration(config)
    processor = build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl")
    make_dataset(root / "data", n_train=16, n_eval=1, seed=0, image_size=48)
    # Two images, the second marker mid-text, plus a text-only row: placement and counts must survive conversion.
    images = sorted((root / "data" / "images").glob("train_*.png"))[:2]
    extra = [
        {"conversations": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "<image>\nand <image> compared?"},
                           {"role": "assistant", "content": "they differ"}],
         "images": [str(images[0]), str(images[1])]},
        {"conversations": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"}]},
    ]
    with open(root / "extra.jsonl", "w") as f:
        f.write("".join(json.dumps(row) + "\n" for row in extra))
    return {"root": root, "model": _save_tiny(root / "model"), "data": root / "data" / "sft.jsonl",
            "extra": root / "extra.jsonl"}


def _args(work, output, *extra):
    return parse_train_args([
        "--model", str(work["model"]), "--data", str(work["data"]), "--output", str(output), "--batch-size", "4",
        "--logging-steps", "1", "--seed", "0", "--warmup-ratio", "0", *extra,
    ], TRL)


def _batch(trainer, dataset, n=4):
    return trainer.data_collator([dataset[i] for i in range(n)])


def _trl_loss(trainer, batch):
    return trainer.compute_loss(trainer.model, {k: v.clone() for k, v in batch.items()})


# ----------------------------------------------------------------------------------------------------------------------


def test_conversion_keeps_image_positions_and_counts(work):
    dataset = TRLChatDataset(work["extra"])
    assert len(dataset) == 2 and dataset.stats.kept == 2
    two = dataset[0]
    assert [type(image) for image in two["images"]] == [Image.Image, Image.Image]
    assert two["messages"][1]["content"] == [
        {"type": "image"}, {"type": "text", "text": "\nand "}, {"type": "image"}, {"type": "text", "text": " compared?"},
    ]
    assert dataset[1]["images"] == []
    # Fresh copies: what a collator adds must not leak into the next epoch.
    two["messages"][1]["content"][0]["image"] = "x"
    assert "image" not in dataset[0]["messages"][1]["content"][0]
    lone = parse_row({"conversations": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a"}],
                      "image": str(work["root"] / "data" / "images" / "train_000000.png")}, None)
    assert lone.messages[0] == {"role": "user", "content": [{"type": "image"}]}


def test_collated_labels_are_assistant_replies_only(work):
    processor = AutoProcessor.from_pretrained(work["model"], trust_remote_code=True)
    tokenizer = processor.tokenizer
    rows = [TRLChatDataset(work["data"])[i] for i in range(3)] + [TRLChatDataset(work["extra"])[i] for i in range(2)]
    originals = [json.loads(line) for line in open(work["data"])][:3] + [json.loads(line) for line in open(work["extra"])]
    batch = build_collator(processor)([dict(row) for row in rows])

    n_images = [1, 1, 1, 2, 0]
    assert batch["pixel_values"].shape == (5, 3, 48, 48)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    never = torch.tensor([tokenizer.pad_token_id, processor.image_token_id, processor.vision_start_token_id,
                          processor.vision_end_token_id])
    for row in range(5):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row].bool()
        assert int((ids == processor.image_token_id).sum()) == n_images[row] * processor.image_seq_length
        labelled = labels != IGNORE_INDEX
        assert torch.equal(labels[labelled], ids[labelled])
        assert not torch.isin(labels[labelled], never).any() and not labelled[~mask].any()
        # Exactly the replies and their <|im_end|>, in order: no role header, prompt, system or image token.
        replies = [t["content"] for t in originals[row]["conversations"] if t["role"] == "assistant"]
        expected = [i for reply in replies for i in tokenizer.encode(reply, add_special_tokens=False) + [im_end]]
        assert labels[labelled].tolist() == expected
        assert int((labels == im_end).sum()) == len(replies) < int((ids == im_end).sum())

    # --max-length drops (never truncates) rows by their templated length, images expanded.
    text_only_length = int(batch["attention_mask"][4].sum())
    short = TRLChatDataset(work["extra"], processor=processor, max_length=text_only_length)
    assert len(short) == 1 and short.stats.skipped == {"too_long": 1} and short[0]["images"] == []

    # Why the wrapper exists: TRL's stock collator (full-sequence loss) labels the image placeholders.
    plain = DataCollatorForVisionLanguageModeling(processor=processor)([dict(rows[0])])
    assert (plain["labels"] == processor.image_token_id).sum() == processor.image_seq_length


def test_full_sft_images_reach_loss_and_loss_falls(work, tmp_path):
    args = _args(work, tmp_path / "out", "--max-steps", "6", "--lr", "3e-3")
    trainer, dataset = build_trainer(args)
    model = trainer.model
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    batch = _batch(trainer, dataset)

    model.train()
    # TRL's fused path (inner model + lm_head.weight) gives the model's own training loss.
    with torch.no_grad():
        trl_loss = _trl_loss(trainer, batch)
        own_loss = model(**{k: v.clone() for k, v in batch.items()}).loss
        altered = _trl_loss(trainer, {**batch, "pixel_values": torch.randn_like(batch["pixel_values"])})
    torch.testing.assert_close(trl_loss, own_loss, rtol=1e-5, atol=1e-5)
    assert abs(float(altered) - float(trl_loss)) > 1e-4, "pixel_values do not reach TRL's loss"

    model.zero_grad(set_to_none=True)
    _trl_loss(trainer, batch).backward()
    projector_grads = [p.grad for p in model.model.multi_modal_projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in projector_grads)
    assert all(p.grad is None for p in model.model.vision_tower.parameters())
    model.zero_grad(set_to_none=True)

    before = float(trl_loss)
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert result.global_step == 6 and len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    model.train()
    with torch.no_grad():
        after = float(_trl_loss(trainer, batch))
    assert after < before - 0.05, (before, after)

    final = save_outputs(trainer, args)
    assert final is model
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    assert TrainConfig.load(out) == args and (out / CONFIG_FILE).is_file()
    saved = load_file(out / "model.safetensors")
    assert torch.equal(saved["model.multi_modal_projector.linear_1.weight"],
                       model.model.multi_modal_projector.linear_1.weight.detach())


def test_lora_trains_adapters_and_projector_only_and_merge_reloads(work, tmp_path, isolated):
    out = tmp_path / "out"
    args = _args(work, out, "--lora", "--merge", "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "3",
                 "--lr", "1e-2")
    original = load_file(work["model"] / "model.safetensors")
    trainer, dataset = build_trainer(args)
    peft_model = trainer.model

    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert all(".language_model." in n for n in trainable if "lora_" in n)
    assert any("multi_modal_projector.modules_to_save" in n for n in trainable)
    counts = parameter_report(peft_model)
    assert counts["vision"]["trainable"] == 0 and counts["decoder"]["trainable"] == 0
    assert counts["all"]["trainable"] == counts["lora"]["total"] + counts["projector"]["total"] // 2

    trainer.train()
    base = peft_model.get_base_model()
    changed_projector = False
    for name, param in base.named_parameters():
        if "lora_" in name:
            continue
        if "modules_to_save" in name:  # the trained projector copy
            key = name.replace("modules_to_save.default.", "")
            changed_projector |= not torch.equal(param.detach(), original[key])
            continue
        key = name.replace("base_layer.", "").replace("original_module.", "")
        if key == "lm_head.weight":
            key = "model.language_model.embed_tokens.weight"
        assert torch.equal(param.detach(), original[key]), f"{name} changed"
    assert changed_projector
    assert any(p.abs().sum() > 0 for n, p in base.named_parameters() if "lora_B" in n)

    merged = save_outputs(trainer, args)
    q_key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q_key], original[q_key])  # the adapter was merged in
    assert (out / "adapter" / "adapter_config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith("MiniMindVForConditionalGeneration")
    assert not any("lora" in key or "modules_to_save" in key for key in load_file(out / "model.safetensors"))

    # A user without the project: Auto classes + remote code only.
    isolated(f"""
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        out = {str(out)!r}
        model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What color?"}}]}}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[Image.open({str(sorted((work["root"] / "data" / "images").glob("*.png"))[0])!r})],
                           text=text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.save({{"inputs": dict(inputs), "logits": logits}}, "result.pt")
    """)
    saved = torch.load(tmp_path / "result.pt")
    merged.eval()
    with torch.no_grad():
        logits = merged(**saved["inputs"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)


def test_moe_balance_loss_is_added_to_trl_loss(work, tmp_path):
    """Mixtral's contract: TRL's fused path adds the balance loss from the inner model's router logits, so its loss
    equals the model's own (token loss + router_aux_loss_coef x balance loss)."""
    folder = _save_tiny(tmp_path / "moe", use_moe=True)
    model, processor = load_model_and_processor(model_dir=folder, require_processor=True)
    dataset = TRLChatDataset(work["data"])
    trainer = SFTTrainer(model=model, args=sft_config(_args(work, tmp_path / "out")),
                         train_dataset=dataset.to_hf_dataset(), processing_class=processor,
                         data_collator=build_collator(processor))
    batch = _batch(trainer, dataset)
    model.train()
    with torch.no_grad():
        own = model(**{k: v.clone() for k, v in batch.items()})
        trl_loss = _trl_loss(trainer, batch)
    assert own.aux_loss is not None and float(own.aux_loss) > 0
    torch.testing.assert_close(trl_loss, own.loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_bf16_autocast_trains(work, tmp_path, lora):
    """--bf16 on CPU: autocast over fp32 master weights through TRL's fused LM-head loss, full and LoRA."""
    extra = ["--lora"] if lora else []
    args = _args(work, tmp_path / "out", "--max-steps", "6", "--lr", "3e-3", "--bf16", *extra)
    trainer, _ = build_trainer(args)
    assert trainer.args.bf16
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert result.global_step == 6 and all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
