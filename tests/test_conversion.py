"""Qwen3 backbone + CLIP/SigLIP tower import and Qwen3 export (processing/conversion/, scripts/import_qwen3.py,
scripts/export_qwen3.py), checked against transformers on tiny random checkpoints
(processing/conversion/random_checkpoints.py: hidden 64, 2 layers, vocab 300, a ~290-token byte-level BPE tokenizer,
32 px vision towers). Llama decoders: test_conversion_llama.py.
"""

import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel, PreTrainedTokenizerFast, Qwen3ForCausalLM, SiglipVisionModel

from conftest import run_script, tiny_model
from helpers_conversion import text_batch
from processing.conversion.assembly import convert_qwen3_to_minimind_v, import_qwen3
from processing.conversion.qwen3 import convert_minimind_v_to_qwen3, qwen3_decoder_fields
from processing.conversion.random_checkpoints import make_decoder, make_vision
from processing.conversion.safetensors_io import CheckpointError, SafetensorsCheckpoint

VOCAB = 300
IMAGE_SIZE, PATCH = 32, 16


# ----------------------------------------------------------------------------------------------- builders


def make_qwen3(folder: Path, vocab: int = VOCAB, **options) -> Path:
    """A tiny random Qwen3 folder (processing/conversion/random_checkpoints.py)."""
    return make_decoder(folder, "qwen3", "tiny", vocab_size=vocab, **options)


def reference_tower(folder: Path, kind: str):
    """The transformers vision model the tower must reproduce, loaded with no missing keys."""
    cls = CLIPVisionModel if kind.startswith("clip") else SiglipVisionModel
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qwen3_import")


@pytest.fixture(scope="module")
def clip_dir(work) -> Path:
    return make_vision(work / "clip_full", "clip_full")


def _cached(path: Path, build):
    return path if path.exists() else build(path)


# ----------------------------------------------------------------------------------------------- text parity


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("shards", [False, True], ids=["single", "sharded"])
def test_text_logits_match_transformers_qwen3(work, clip_dir, tied, shards):
    qwen_dir = _cached(work / f"qwen_{tied}_{shards}", lambda p: make_qwen3(p, tied=tied, shards=shards))
    n_shards = len(list(qwen_dir.glob("model-*-of-*.safetensors")))
    assert (n_shards >= 2) if shards else (qwen_dir / "model.safetensors").is_file()

    model, processor = import_qwen3(qwen_dir, clip_dir)
    reference = Qwen3ForCausalLM.from_pretrained(qwen_dir).eval()
    ids, mask = text_batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        actual = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)

    config = model.config.text_config
    assert (config.vocab_size, config.hidden_size, config.head_dim, config.num_key_value_heads) == (VOCAB, 64, 16, 2)
    assert config.rope_theta == 50000.0 and config.qk_norm and config.max_position_embeddings == 512
    assert config.tie_word_embeddings is tied
    embed, head = model.get_input_embeddings().weight, model.lm_head.weight
    assert (embed.data_ptr() == head.data_ptr()) is tied
    # The tokenizer already has the vision tokens and they fit: ids reused, no resize.
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 5
    assert embed.shape[0] == VOCAB
    assert processor.chat_template == processor.tokenizer.chat_template and "<|im_start|>" in processor.chat_template


@pytest.mark.parametrize("same", [True, False], ids=["head-equals-embeddings", "head-differs"])
def test_stored_head_with_tied_config(work, clip_dir, same):
    """tie_word_embeddings=True but the file stores lm_head: tied if equal to the embeddings, else kept untied."""
    source = _cached(work / "qwen_True_False", lambda p: make_qwen3(p))
    folder = work / f"qwen_stored_head_{same}"
    folder.mkdir(exist_ok=True)
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    tensors = load_file(folder / "model.safetensors")
    embed = tensors["model.embed_tokens.weight"]
    tensors["lm_head.weight"] = embed.clone() if same else embed.flip(0).contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    model, _ = import_qwen3(folder, clip_dir)
    assert model.config.tie_word_embeddings is same
    assert (model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()) is same
    assert torch.equal(model.lm_head.weight, tensors["lm_head.weight"])


def test_overwrite_replaces_only_after_success(work, clip_dir):
    qwen_dir = _cached(work / "qwen_True_False", lambda p: make_qwen3(p))
    target = work / "overwrite_target"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(CheckpointError, match="already exists"):
        convert_qwen3_to_minimind_v(qwen_dir, clip_dir, target)
    with pytest.raises(CheckpointError, match="supported vision checkpoints"):
        convert_qwen3_to_minimind_v(qwen_dir, qwen_dir, target, overwrite=True)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    convert_qwen3_to_minimind_v(qwen_dir, clip_dir, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".overwrite_target")]


def test_rope_and_unsupported_features_from_raw_config(work):
    qwen_dir = _cached(work / "qwen_True_False", lambda p: make_qwen3(p))
    raw = json.loads((qwen_dir / "config.json").read_text())
    legacy = work / "legacy_config"
    legacy.mkdir(exist_ok=True)

    def fields(**changes):
        data = {k: v for k, v in raw.items() if k != "rope_parameters"}
        data.update(changes)
        (legacy / "config.json").write_text(json.dumps(data))
        return qwen3_decoder_fields(legacy)

    # transformers 4 layout: top-level rope_theta, rope_scaling null.
    assert fields(rope_theta=1234.0, rope_scaling=None)["rope_theta"] == 1234.0
    assert fields(rope_parameters={"rope_type": "default", "rope_theta": 777.0})["rope_theta"] == 777.0
    with pytest.raises(CheckpointError, match="rope type 'linear'"):
        fields(rope_theta=1e4, rope_scaling={"type": "linear", "factor": 2.0})
    with pytest.raises(CheckpointError, match="sliding-window"):
        fields(rope_theta=1e4, use_sliding_window=True, sliding_window=64, max_window_layers=0)
    with pytest.raises(CheckpointError, match="expected 'qwen3'"):
        fields(model_type="qwen3_moe")


def test_added_vision_tokens_resize_embeddings(work, clip_dir):
    # Vocabulary exactly as large as the tokenizer, which lacks the vision tokens: they must be added + resized.
    qwen_dir = _cached(work / "qwen_novision", lambda p: make_qwen3(p, vision_tokens=False, vocab=290))
    original = Qwen3ForCausalLM.from_pretrained(qwen_dir).eval()
    old_vocab = original.config.vocab_size
    assert len(PreTrainedTokenizerFast.from_pretrained(qwen_dir)) == old_vocab

    model, processor = import_qwen3(qwen_dir, clip_dir)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == old_vocab + 3
    assert model.config.text_config.vocab_size == model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") >= old_vocab
    assert torch.equal(model.get_input_embeddings().weight[:old_vocab], original.get_input_embeddings().weight)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    ids, mask = text_batch()
    with torch.no_grad():
        expected = original(input_ids=ids, attention_mask=mask).logits
        actual = model(input_ids=ids, attention_mask=mask).logits[..., :old_vocab]
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)

    # The processor expands the placeholder with the new ids and the model consumes them.
    inputs = processor(text="<|image_pad|> describe", images=PIL.Image.new("RGB", (40, 30), (200, 30, 30)),
                       return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.image_seq_length
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


# ----------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("tied,shards", [(True, False), (False, True)], ids=["tied-single", "untied-sharded"])
def test_import_export_round_trip(work, clip_dir, tied, shards):
    qwen_dir = _cached(work / f"qwen_{tied}_{shards}", lambda p: make_qwen3(p, tied=tied, shards=shards))
    vlm_dir = convert_qwen3_to_minimind_v(qwen_dir, clip_dir, work / f"vlm_{tied}", projector_type="linear")
    qwen_out = convert_minimind_v_to_qwen3(vlm_dir, work / f"exported_{tied}")

    exported = json.loads((qwen_out / "config.json").read_text())
    assert exported["model_type"] == "qwen3" and exported["tie_word_embeddings"] is tied
    assert (qwen_out / "model.safetensors").is_file()
    keys = set(SafetensorsCheckpoint(qwen_out).keys())
    assert ("lm_head.weight" in keys) is not tied and not any("vision" in k or "projector" in k for k in keys)
    tokenizer_config = json.loads((qwen_out / "tokenizer_config.json").read_text())
    assert "processor_class" not in tokenizer_config and "AutoProcessor" not in tokenizer_config.get("auto_map", {})

    original = Qwen3ForCausalLM.from_pretrained(qwen_dir).eval()
    reloaded = Qwen3ForCausalLM.from_pretrained(qwen_out).eval()
    ids, mask = text_batch(seed=1)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits,
                           original(input_ids=ids, attention_mask=mask).logits)
    assert PreTrainedTokenizerFast.from_pretrained(qwen_out).convert_tokens_to_ids("<|image_pad|>") == 5

    half = convert_minimind_v_to_qwen3(vlm_dir, work / f"exported_bf16_{tied}", dtype="bfloat16")
    ckpt = SafetensorsCheckpoint(half)
    assert {ckpt.dtype(k) for k in ckpt.keys()} == {"BF16"}


def test_export_refuses_moe_and_missing_qk_norm(tmp_path):
    tiny_model(qk_norm=False).save_pretrained(tmp_path / "no_qk_norm")
    with pytest.raises(CheckpointError, match="qk_norm"):
        convert_minimind_v_to_qwen3(tmp_path / "no_qk_norm", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- vision towers


@pytest.mark.parametrize("kind", ["clip_full", "clip_vision", "clip_vision_legacy", "siglip_vision", "siglip_full"])
def test_vision_tower_matches_transformers(work, kind):
    qwen_dir = _cached(work / "qwen_True_False", lambda p: make_qwen3(p))
    vision_dir = _cached(work / kind, lambda p: make_vision(p, kind))
    model, processor = import_qwen3(qwen_dir, vision_dir, projector_type="mlp")
    reference = reference_tower(vision_dir, kind)

    pixels = processor(text="<|image_pad|>", images=[PIL.Image.new("RGB", (45, 37), (10, 120, 240))],
                       return_tensors="pt")["pixel_values"]
    pixels = torch.cat([pixels, torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)])
    n_patches = (IMAGE_SIZE // PATCH) ** 2
    with torch.no_grad():
        expected = reference(pixel_values=pixels).last_hidden_state[:, -n_patches:]
        actual = model.model.vision_tower(pixel_values=pixels).last_hidden_state[:, -n_patches:]
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.get_image_features(pixels).pooler_output, model.multi_modal_projector(expected),
                                   atol=1e-5, rtol=1e-5)

    image_processor = processor.image_processor
    if kind == "clip_full":  # settings from the checkpoint's preprocessor_config.json
        assert list(image_processor.image_mean) == [0.5, 0.4, 0.3]
    elif kind.startswith("clip"):
        assert list(image_processor.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    else:
        assert list(image_processor.image_mean) == [0.5, 0.5, 0.5]
    assert model.config.vision_config.model_type == ("clip_vision_model" if kind.startswith("clip")
                                                     else "siglip_vision_model")


# ----------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli(work, clip_dir):
    """Run every CLI case at once (each process spends seconds importing torch/transformers) and collect results."""
    root = work / "cli"
    root.mkdir()
    good = _cached(work / "qwen_True_True", lambda p: make_qwen3(p, tied=True, shards=True))

    def copy_of(name: str) -> Path:
        target = root / name
        target.mkdir()
        for path in good.iterdir():
            (target / path.name).write_bytes(path.read_bytes())
        return target

    no_weights = copy_of("no_weights")
    for path in no_weights.glob("model*.safetensors*"):
        path.unlink()
    truncated = copy_of("truncated")
    shard = sorted(truncated.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    missing_shard = copy_of("missing_shard")
    sorted(missing_shard.glob("model-*.safetensors"))[0].unlink()
    bad_shapes = copy_of("bad_shapes")
    config = json.loads((bad_shapes / "config.json").read_text())
    config["intermediate_size"] = 96
    (bad_shapes / "config.json").write_text(json.dumps(config))
    vit_dir = make_vision(root / "vit", "vit")
    occupied = root / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("precious")
    moe_dir = root / "moe_model"
    tiny_model(use_moe=True).save_pretrained(moe_dir)
    no_tokenizer = copy_of("no_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    # --output equal to an input, or a folder containing one, with --overwrite: refused, inputs untouched.
    self_target = copy_of("self_target")
    parent = root / "parent"
    parent.mkdir()
    nested_qwen = parent / "qwen3"
    nested_qwen.mkdir()
    for path in good.iterdir():
        (nested_qwen / path.name).write_bytes(path.read_bytes())
    vlm_self = root / "vlm_self"
    tiny_model().save_pretrained(vlm_self)
    protected = {name: _snapshot(folder) for name, folder in
                 [("self_target", self_target), ("parent", parent), ("vlm_self", vlm_self), ("clip", clip_dir)]}

    cases = {
        "ok": ("import_qwen3.py", "--qwen3", good, "--vision", clip_dir, "--output", root / "out_ok",
               "--projector", "cross_attention"),
        "no_weights": ("import_qwen3.py", "--qwen3", no_weights, "--vision", clip_dir, "--output", root / "out_1"),
        "truncated": ("import_qwen3.py", "--qwen3", truncated, "--vision", clip_dir, "--output", root / "out_2"),
        "missing_shard": ("import_qwen3.py", "--qwen3", missing_shard, "--vision", clip_dir, "--output",
                          root / "out_3"),
        "bad_shapes": ("import_qwen3.py", "--qwen3", bad_shapes, "--vision", clip_dir, "--output", root / "out_4"),
        "bad_vision": ("import_qwen3.py", "--qwen3", good, "--vision", vit_dir, "--output", root / "out_5"),
        "occupied": ("import_qwen3.py", "--qwen3", good, "--vision", clip_dir, "--output", occupied),
        "export_moe": ("export_qwen3.py", "--model", moe_dir, "--output", root / "out_6"),
        "bad_projector": ("import_qwen3.py", "--qwen3", good, "--vision", clip_dir, "--output", root / "out_7",
                          "--projector", "bogus"),
        "no_tokenizer": ("import_qwen3.py", "--decoder", no_tokenizer, "--vision", clip_dir, "--output", root / "out_8"),
        "output_is_decoder": ("import_qwen3.py", "--qwen3", self_target, "--vision", clip_dir, "--output", self_target,
                              "--overwrite"),
        "output_is_vision": ("import_qwen3.py", "--qwen3", good, "--vision", clip_dir, "--output", clip_dir,
                             "--overwrite"),
        "output_contains_decoder": ("import_qwen3.py", "--qwen3", nested_qwen, "--vision", clip_dir, "--output",
                                    parent, "--overwrite"),
        "export_onto_itself": ("export_qwen3.py", "--model", vlm_self, "--output", vlm_self, "--overwrite"),
    }
    outputs = {"no_weights": "out_1", "truncated": "out_2", "missing_shard": "out_3", "bad_shapes": "out_4",
               "bad_vision": "out_5", "occupied": "occupied", "export_moe": "out_6", "no_tokenizer": "out_8"}
    running = {name: run_script(*args) for name, args in cases.items()}
    results = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr)
    return {"root": root, "results": results, "outputs": outputs, "good": good, "protected": protected,
            "folders": {"self_target": self_target, "parent": parent, "vlm_self": vlm_self, "clip": clip_dir}}


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes): what an 'untouched' check compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case,message", [
    ("no_weights", "has no model.safetensors or model.safetensors.index.json"),
    ("truncated", "is not a valid safetensors file"),
    ("missing_shard", "names shard file(s) that do not exist"),
    ("bad_shapes", "shape mismatches: model.layers.0.mlp.down_proj.weight [64, 128] vs model"),
    ("bad_vision", "'vit' checkpoint; supported vision checkpoints are CLIP and SigLIP"),
    ("occupied", "already exists and is not empty (pass --overwrite"),
    ("export_moe", "mixture-of-experts"),
    ("no_tokenizer", "has no tokenizer (none of tokenizer.json"),
])
def test_cli_errors_are_one_line_and_leave_nothing(cli, case, message):
    returncode, stdout, stderr = cli["results"][case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 1, (stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], lines[0]
    root = cli["root"]
    output = root / cli["outputs"][case]
    if case == "occupied":  # refused, untouched
        assert [p.name for p in output.iterdir()] == ["keep.txt"] and (output / "keep.txt").read_text() == "precious"
    else:
        assert not output.exists()
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")], "temporary folders left behind"


@pytest.mark.parametrize("case,protected", [
    ("output_is_decoder", "self_target"), ("output_is_vision", "clip"), ("output_contains_decoder", "parent"),
    ("export_onto_itself", "vlm_self"),
])
def test_cli_refuses_an_output_that_would_delete_an_input(cli, case, protected):
    """--overwrite with --output equal to (or containing) an input folder: one error line, every input file intact."""
    returncode, stdout, stderr = cli["results"][case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 1, (stdout, stderr)
    assert len(lines) == 1 and "is (or contains) the input" in lines[0] and "would delete the input" in lines[0]
    assert _snapshot(cli["folders"][protected]) == cli["protected"][protected]


def test_tokenizer_without_vocabulary_is_refused(work, clip_dir, tmp_path):
    """A folder whose tokenizer builds but encodes text to nothing (or outgrows the embeddings) is refused."""
    from processing.conversion.safetensors_io import load_tokenizer

    qwen_dir = _cached(work / "qwen_True_False", lambda p: make_qwen3(p))
    with pytest.raises(CheckpointError, match="has 290 tokens but the decoder has only 100 embedding rows"):
        load_tokenizer(qwen_dir, vocab_size=100)
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((qwen_dir / "config.json").read_bytes())
    (config_only / "vocab.json").write_text("{}")  # a vocabulary file, but an empty vocabulary
    (config_only / "merges.txt").write_text("")
    with pytest.raises(CheckpointError, match="encodes 'Hello world' to no tokens"):
        load_tokenizer(config_only)


def test_cli_projector_choices_come_from_the_registry(cli):
    from modeling_minimind_v.projector import PROJECTORS

    returncode, _, stderr = cli["results"]["bad_projector"]
    assert returncode == 2 and "argument --projector: invalid choice: 'bogus'" in stderr
    assert all(repr(name) in stderr for name in PROJECTORS)
    assert not (cli["root"] / "out_7").exists()


def test_cli_output_loads_without_the_project_and_generates(cli, isolated):
    returncode, stdout, stderr = cli["results"]["ok"]
    assert returncode == 0, stderr
    assert stdout.strip().startswith("wrote MiniMind-V checkpoint to")
    out = cli["root"] / "out_ok"
    config = json.loads((out / "config.json").read_text())
    assert config["projector_type"] == "cross_attention" and config["image_token_id"] == 5
    isolated(
        f"""
        import PIL.Image, torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
        out = {str(out)!r}
        model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
        assert type(model).__name__ == "MiniMindVForConditionalGeneration"
        assert type(processor).__name__ == "MiniMindVProcessor"
        image = PIL.Image.new("RGB", (40, 30), (200, 30, 30))
        messages = [{{"role": "user", "content": [{{"type": "image", "image": image}},
                                                  {{"type": "text", "text": "describe"}}]}}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        assert int((inputs["input_ids"] == 5).sum()) == model.config.image_seq_length == 64
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 4 or generated[0, -1] == 2
        pipe = pipeline("image-text-to-text", model=out, trust_remote_code=True)
        result = pipe(text=messages, max_new_tokens=3, do_sample=False)
        assert isinstance(result[0]["generated_text"], (str, list)), result
        """
    )
