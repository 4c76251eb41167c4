"""Llama-architecture decoders through import and export (processing/conversion/llama.py, decoders.py, decoder.py,
random_checkpoints.py; scripts/import_qwen3.py --decoder, scripts/export_qwen3.py --format,
scripts/make_random_checkpoint.py), checked against transformers' LlamaForCausalLM on tiny random checkpoints.
The same on the real SmolLM2-135M weights: test_smollm2.py."""

import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import run_script, tiny_model
from helpers_conversion import text_batch
from processing.conversion.assembly import convert_qwen3_to_minimind_v, import_qwen3
from processing.conversion.decoders import export_family_for, export_minimind_v
from processing.conversion.llama import convert_minimind_v_to_llama, llama_decoder_fields
from processing.conversion.random_checkpoints import make_decoder, make_vision
from processing.conversion.safetensors_io import CheckpointError, SafetensorsCheckpoint

VOCAB = 300


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama_import")


@pytest.fixture(scope="module")
def clip_dir(work) -> Path:
    return make_vision(work / "clip", "clip_vision")


def llama(work: Path, name: str, **options) -> Path:
    folder = work / name
    return folder if folder.exists() else make_decoder(folder, "llama", "tiny", **options)


def assert_same_logits(model, reference, vocab: int, atol: float = 1e-5):
    ids, mask = text_batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        actual = model(input_ids=ids, attention_mask=mask).logits[..., :vocab]
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=atol, rtol=atol)


# ----------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("tied,bias", [(True, False), (False, False), (True, True)],
                         ids=["tied", "untied", "attention-bias"])
def test_llama_logits_and_config_match_transformers(work, clip_dir, tied, bias):
    folder = llama(work, f"llama_{tied}_{bias}", tied=tied, attention_bias=bias, vocab_size=VOCAB)
    model, processor = import_qwen3(folder, clip_dir)
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    assert_same_logits(model, reference, VOCAB)

    text = model.config.text_config
    assert not text.qk_norm and text.attention_bias is bias
    assert (text.hidden_size, text.head_dim, text.num_key_value_heads, text.rope_theta) == (64, 16, 2, 50000.0)
    assert text.rms_norm_eps == reference.config.rms_norm_eps and model.config.tie_word_embeddings is tied
    assert not hasattr(model.model.language_model.layers[0].self_attn.q_norm, "weight")  # Identity: no QK-norm
    # The tiny tokenizer has the vision tokens in its 290 entries: ids reused, table unchanged.
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 5
    assert model.get_input_embeddings().weight.shape[0] == VOCAB


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_missing_vision_tokens_get_mean_rows(work, clip_dir, tied):
    """Tokenizer as large as the table and without vision tokens: three special tokens, three new rows, each the mean
    of the old rows (embeddings and untied head), ids read from the tokenizer."""
    folder = llama(work, f"llama_novision_{tied}", tied=tied, vision_tokens=False, vocab_size=290)
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    model, processor = import_qwen3(folder, clip_dir)
    tokenizer = processor.tokenizer
    new_ids = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"])
    assert sorted(new_ids) == [290, 291, 292] and model.config.image_token_id == new_ids[2]
    assert all(token in tokenizer.all_special_tokens for token in ("<|vision_start|>", "<|image_pad|>"))
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    old_embed, old_head = reference.get_input_embeddings().weight, reference.get_output_embeddings().weight
    assert embed.shape[0] == head.shape[0] == model.config.text_config.vocab_size == 293
    assert torch.equal(embed[:290], old_embed) and torch.equal(head[:290], old_head)
    for table, old in ((embed, old_embed), (head, old_head)):
        torch.testing.assert_close(table[290:], old.mean(0).expand(3, -1), atol=0, rtol=0)
    assert (embed.data_ptr() == head.data_ptr()) is tied
    assert_same_logits(model, reference, 290)

    inputs = processor(text="<|image_pad|> describe", images=PIL.Image.new("RGB", (40, 30), (200, 30, 30)),
                       return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.image_seq_length
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_end_of_turn_padding_is_replaced(work, clip_dir, tmp_path):
    """A tokenizer padding with <|im_end|> (as SmolLM2's does) gets <|endoftext|> as pad: training never labels the
    pad id, so <|im_end|> would otherwise never be learnt. Config, generation config and model card follow."""
    from processing.labels import never_labelled_ids

    source = llama(work, "llama_True_False", vocab_size=VOCAB)
    folder = tmp_path / "decoder"
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "pad_token": "<|im_end|>"}))
    assert PreTrainedTokenizerFast.from_pretrained(folder).pad_token == "<|im_end|>"

    out = convert_qwen3_to_minimind_v(folder, clip_dir, tmp_path / "vlm")
    model, processor = import_qwen3(folder, clip_dir)
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert processor.tokenizer.pad_token == "<|endoftext|>"
    assert model.config.text_config.pad_token_id == model.generation_config.pad_token_id == pad_id
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") not in never_labelled_ids(processor)
    assert "The pad token is `<|endoftext|>` (the decoder's was `<|im_end|>`)" in (out / "README.md").read_text()


def test_transformers_4_layout_and_defaults(work, tmp_path):
    """Top-level rope_theta (transformers 4) is read; absent head_dim/tie fields take LlamaConfig's defaults."""
    raw = json.loads((llama(work, "llama_True_False", vocab_size=VOCAB) / "config.json").read_text())
    for key in ("rope_parameters", "head_dim", "tie_word_embeddings"):
        raw.pop(key, None)
    raw.update(rope_theta=1234.0, rope_scaling=None)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    fields = llama_decoder_fields(tmp_path)
    assert fields["rope_theta"] == 1234.0 and fields["head_dim"] == 64 // 4 and fields["tie_word_embeddings"] is False
    assert fields["qk_norm"] is False


@pytest.mark.parametrize("changes,message", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, "rope type 'llama3'"),
    ({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear'"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"sliding_window": 64}, "sliding-window attention (sliding_window 64)"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantized checkpoint (quant_method 'gptq')"),
    ({"model_type": "mistral"}, "supported decoders are ['llama', 'qwen3']"),
], ids=["rope-llama3", "rope-linear-legacy", "mlp-bias", "sliding-window", "quantized", "other-architecture"])
def test_unsupported_llama_features_are_refused(work, clip_dir, tmp_path, changes, message):
    source = llama(work, "llama_True_False", vocab_size=VOCAB)
    folder = tmp_path / "decoder"
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    raw = json.loads((folder / "config.json").read_text())
    if "rope_scaling" in changes:
        raw.pop("rope_parameters")
    raw.update(changes)
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        convert_qwen3_to_minimind_v(folder, clip_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("tied,vision_tokens", [(True, True), (False, False)], ids=["tied", "untied-added-tokens"])
def test_import_export_round_trip_is_bit_identical(work, clip_dir, tied, vision_tokens):
    vocab = VOCAB if vision_tokens else 290
    source = llama(work, f"llama_rt_{tied}", tied=tied, vision_tokens=vision_tokens, vocab_size=vocab)
    vlm = convert_qwen3_to_minimind_v(source, clip_dir, work / f"vlm_rt_{tied}")
    assert export_family_for(vlm).name == "llama"  # auto: no QK-norm -> Llama
    out = export_minimind_v(vlm, work / f"exported_rt_{tied}")

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is tied
    original, exported = SafetensorsCheckpoint(source), SafetensorsCheckpoint(out)
    assert set(exported.keys()) == set(original.keys())
    for key in original.keys():
        old, new = original.get(key), exported.get(key)
        if new.shape != old.shape:  # embedding/head rows added for the vision tokens: the old rows are unchanged
            assert key in ("model.embed_tokens.weight", "lm_head.weight") and new.shape[0] == old.shape[0] + 3
            new = new[: old.shape[0]]
        assert torch.equal(new, old), key
    reference = LlamaForCausalLM.from_pretrained(source).eval()
    reloaded = LlamaForCausalLM.from_pretrained(out).eval()
    ids, mask = text_batch(seed=1)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits[..., :vocab],
                           reference(input_ids=ids, attention_mask=mask).logits)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == json.loads((vlm / "config.json").read_text())[
        "image_token_id"]

    card = (vlm / "README.md").read_text()
    assert "## Provenance" in card and "llama architecture" in card
    if vision_tokens:
        assert "already had the vision tokens" in card
    else:
        assert "grew from 290 to 293 rows; each new row was set to the mean" in card


def test_export_format_must_fit_the_decoder(tmp_path):
    tiny_model(qk_norm=True).save_pretrained(tmp_path / "qk")
    tiny_model(qk_norm=False, use_moe=True).save_pretrained(tmp_path / "moe")
    with pytest.raises(CheckpointError, match="qk_norm=True; Llama has no q_norm/k_norm"):
        convert_minimind_v_to_llama(tmp_path / "qk", tmp_path / "out")
    with pytest.raises(CheckpointError, match="mixture-of-experts decoder, which has no dense Llama equivalent"):
        export_minimind_v(tmp_path / "moe", tmp_path / "out")
    with pytest.raises(CheckpointError, match="unknown export format 'gpt2'"):
        export_minimind_v(tmp_path / "qk", tmp_path / "out", export_format="gpt2")
    assert export_family_for(tmp_path / "qk").name == "qwen3"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_random_checkpoint_import_export(tmp_path):
    """make_random_checkpoint.py -> import_qwen3.py --decoder -> export_qwen3.py (auto: Llama), as a user runs them."""
    def run(script, *args):
        process = run_script(script, *args)
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        return stdout

    assert "wrote decoder/ and vision/ into" in run("make_random_checkpoint.py", "--family", "llama", "--output",
                                                     tmp_path / "random", "--vision", "siglip", "--untied")
    assert json.loads((tmp_path / "random" / "decoder" / "config.json").read_text())["model_type"] == "llama"
    run("import_qwen3.py", "--decoder", tmp_path / "random" / "decoder", "--vision", tmp_path / "random" / "vision",
        "--output", tmp_path / "vlm")
    assert "wrote decoder checkpoint to" in run("export_qwen3.py", "--model", tmp_path / "vlm", "--output",
                                                tmp_path / "llama")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False
    vlm_config = json.loads((tmp_path / "vlm" / "config.json").read_text())
    assert vlm_config["vision_config"]["model_type"] == "siglip_vision_model"
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "random" / "decoder").eval()
    exported = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    ids, mask = text_batch()
    with torch.no_grad():
        assert torch.equal(exported(input_ids=ids, attention_mask=mask).logits,
                           reference(input_ids=ids, attention_mask=mask).logits)


# ----------------------------------------------------------------------------------------------- GGUF


def test_gguf_conversion_refuses_bad_paths(tmp_path):
    """processing/conversion/gguf.py: a missing file and an output that would delete the GGUF are named errors
    (checked before the file is read, so no gguf package is needed); the real conversion: test_smollm2.py."""
    from processing.conversion.gguf import cached_gguf_folder, gguf_to_safetensors

    with pytest.raises(CheckpointError, match="missing.gguf does not exist"):
        gguf_to_safetensors(tmp_path / "missing.gguf", tmp_path / "out")
    with pytest.raises(CheckpointError, match="missing.gguf does not exist"):
        cached_gguf_folder(tmp_path / "missing.gguf", tmp_path / "cache")
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.gguf").write_bytes(b"GGUF precious")
    with pytest.raises(CheckpointError, match="is \\(or contains\\) the input"):
        gguf_to_safetensors(models / "model.gguf", models, overwrite=True)
    assert (models / "model.gguf").read_bytes() == b"GGUF precious"
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
