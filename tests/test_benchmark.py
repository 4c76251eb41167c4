"""Smoke test for processing/benchmark.py (scripts/benchmark.py): the tiny preset on CPU, minimind and its LLaVA twin,
one step of each measurement; the numbers themselves are in docs/benchmarks.md."""

from argparse import Namespace

import pytest

from processing.benchmark import format_table, run_benchmark


def test_tiny_benchmark_measures_both_systems():
    args = Namespace(preset="tiny", device="cpu", compare_hf=True, modes="train,generate",
                     systems="minimind,llava_eager", batch_size=2, seq_len=32, label_fraction=0.5, train_steps=1,
                     warmup_steps=1, gen_batch="1", prompt_text_tokens=4, new_tokens=12, peak_tflops=1.0,
                     no_compile=True, decode_attention="module", profile=False, profile_dir="unused", json_out=None)
    results = run_benchmark(args)
    for system in ("minimind", "llava_eager"):
        generated = results[system]["generate"]["batch1"]
        assert results[system]["train"]["tokens_per_s"] > 0 and generated["new_tokens"] == 12
        assert 0 < generated["ttft_ms"] < 1e3 * generated["s"]  # one token costs less than twelve
    assert "llava_best" not in results and results["image_tokens"] == 9
    assert results["ratios"]["train_tokens_per_s_vs_llava_eager"] == pytest.approx(
        results["minimind"]["train"]["tokens_per_s"] / results["llava_eager"]["train"]["tokens_per_s"])
    table = format_table(results, args).splitlines()
    assert table[0].split()[0] == "system" and [row.split()[0] for row in table[1:]] == ["minimind", "llava_eager"]


def test_end_to_end_mode_runs_the_trainer_padded_and_packed_to_the_same_losses():
    """--modes e2e trains through processing.training.trainer on synthetic data twice, padded and packed; same data,
    same seed and equal per-batch losses, so the two final losses agree while each reports its own tokens/s, and the
    step alone on the same batches."""
    args = Namespace(preset="tiny", device="cpu", compare_hf=False, modes="e2e", systems="minimind", batch_size=2,
                     seq_len=32, gen_batch="1", new_tokens=3, train_steps=2, warmup_steps=1, no_compile=True,
                     decode_attention="module", e2e_model=None, e2e_rows=32, e2e_batch_size=8, num_workers=0,
                     profile=False, e2e_layouts="padded,packed")
    seen = []  # what the script's --json-out would hold after each measurement
    results = run_benchmark(args, partial=lambda r: seen.append(sorted(r.get("minimind_e2e", {}))))
    e2e = results["minimind_e2e"]
    assert results["e2e_settings"] == {"rows": 32, "batch_size": 8, "layouts": "padded,packed", "num_workers": 0,
                                       "model": None}
    assert seen[0] == ["padded"] and {"padded", "packed"} <= set(seen[-1])
    for layout in ("padded", "packed"):
        assert e2e[layout]["steps_timed"] == 2 and e2e[layout]["tokens_per_s"] > 0
        # Beside the loop, the trainer's step alone on the same batches (the "within 10% of its own step" target).
        alone = e2e[layout]["step_alone"]
        assert alone["steps_timed"] == 2 and alone["tokens_per_s"] > 0
        assert e2e[layout]["e2e_vs_step"] == pytest.approx(e2e[layout]["mean_tokens_per_s"] / alone["tokens_per_s"])
    assert e2e["packed"]["final_loss"] == pytest.approx(e2e["padded"]["final_loss"], abs=1e-4)
    assert e2e["packing_speedup"] == pytest.approx(e2e["packed"]["tokens_per_s"] / e2e["padded"]["tokens_per_s"])


def test_end_to_end_mode_builds_a_random_checkpoint_for_presets_that_need_a_real_tokenizer(monkeypatch):
    """qwen3-0.6b's token ids are Qwen3's: the e2e mode trains a random checkpoint of that shape, built and imported
    locally (make_random_pair + the Qwen3 import). Here the same path at the tiny shape, padded only."""
    import processing.benchmark as benchmark

    monkeypatch.setitem(benchmark.E2E_RANDOM_CHECKPOINTS, "tiny", ("qwen3", "tiny", "tiny"))
    args = Namespace(preset="tiny", device="cpu", compare_hf=False, modes="e2e", systems="none", batch_size=2,
                     seq_len=32, gen_batch="1", new_tokens=3, train_steps=2, warmup_steps=1, no_compile=True,
                     decode_attention="module", e2e_model=None, e2e_rows=16, e2e_batch_size=8, num_workers=0,
                     profile=False, e2e_layouts="padded")
    e2e = run_benchmark(args)["minimind_e2e"]
    assert set(e2e) == {"padded"} and e2e["padded"]["steps_timed"] == 2 and e2e["padded"]["final_loss"] > 0
    with pytest.raises(ValueError, match="--e2e-layouts"):
        run_benchmark(Namespace(**{**vars(args), "e2e_layouts": "padded,sorted"}))


def test_decode_kernels_without_cuda_are_a_clear_error():
    """The Triton decode attention needs CUDA: asking for it on CPU fails up front instead of timing another path."""
    args = Namespace(preset="tiny", device="cpu", compare_hf=False, modes="generate", systems="minimind",
                     batch_size=2, seq_len=32, gen_batch="1", new_tokens=3, no_compile=True,
                     decode_attention="kernels", profile=False, json_out=None)
    with pytest.raises(ValueError, match="--decode-attention kernels needs a CUDA device"):
        run_benchmark(args)


def test_prefill_graphs_without_cuda_or_for_moe_are_a_clear_error():
    """--prefill graph times the captured prefill or fails: a run that would time the eager one instead is an error."""
    args = Namespace(preset="tiny", device="cpu", compare_hf=False, modes="generate", systems="minimind",
                     batch_size=2, seq_len=32, gen_batch="1", new_tokens=3, no_compile=True,
                     decode_attention="module", prefill="graph", profile=False, json_out=None)
    with pytest.raises(ValueError, match="--prefill graph needs a CUDA device"):
        run_benchmark(args)
    with pytest.raises(ValueError, match="'moe' has an MoE decoder"):
        run_benchmark(Namespace(**{**vars(args), "preset": "moe"}))


@pytest.mark.parametrize("prefill, capture_during", [(None, True), ("eager", False)])
def test_benchmark_sets_the_fast_decoder_switches_for_its_run_only(monkeypatch, prefill, capture_during):
    """The benchmark's --decode-attention / --prefill hold while it runs (unset --prefill: the library's setting) and
    the process gets its own settings back afterwards."""
    import modeling_minimind_v.fast_generate as fast

    monkeypatch.setattr(fast, "USE_DECODE_KERNELS", True)
    monkeypatch.setattr(fast, "CAPTURE_PREFILL", True)
    monkeypatch.setattr(fast, "USE_DECODE_PROJECTIONS", False)
    args = Namespace(preset="tiny", device="cpu", compare_hf=False, modes="generate", systems="minimind",
                     batch_size=2, seq_len=32, gen_batch="1", prompt_text_tokens=4, new_tokens=3, no_compile=True,
                     decode_attention="module", prefill=prefill, profile=False, json_out=None)
    during = []
    results = run_benchmark(args, partial=lambda r: during.append(
        (fast.USE_DECODE_KERNELS, fast.CAPTURE_PREFILL, fast.USE_DECODE_PROJECTIONS)))
    assert during == [(False, capture_during, False)]  # projections: only with the decode kernels
    assert (fast.USE_DECODE_KERNELS, fast.CAPTURE_PREFILL, fast.USE_DECODE_PROJECTIONS) == (True, True, False)
    assert results["decode_projections"] == "module"
    assert results["prefill"] == "eager"  # on CPU the prefill runs eagerly whatever the switch says


def test_per_step_kernels_subtracts_the_prefill_and_ranks_by_gpu_time():
    from processing.benchmark import per_step_kernels

    whole = {"gemv": [40, 400.0], "norm": [20, 40.0], "vision": [3, 30.0]}
    prefill = {"gemv": [4, 40.0], "vision": [3, 30.0]}  # the one-token call: prefill + first choice
    kernels, gpu_us, top = per_step_kernels(whole, prefill, steps=4)
    assert (kernels, gpu_us) == (14.0, 100.0)  # (36 + 20 + 0) / 4 launches, (360 + 40 + 0) / 4 µs
    assert top == [[90.0, 9.0, "gemv"], [10.0, 5.0, "norm"], [0.0, 0.0, "vision"]]


def test_busy_time_counts_overlapping_kernels_once():
    from processing.benchmark import busy_us

    # [0, 10] and [5, 12] overlap (a PDL kernel starting before the previous one ends), [12, 13] touches the
    # second, [20, 24] stands alone, [21, 22] lies inside it; the input is unsorted.
    assert busy_us([(20.0, 24.0), (5.0, 12.0), (0.0, 10.0), (21.0, 22.0), (12.0, 13.0)]) == 13.0 + 4.0
    assert busy_us([]) == 0.0


def test_systems_flag_names_what_it_cannot_run():
    from processing.benchmark import systems_to_run

    def wanted(systems, compare_hf):
        return systems_to_run(Namespace(systems=systems, compare_hf=compare_hf))

    assert wanted(None, False) == ["minimind"]
    assert wanted(None, True) == ["minimind", "llava_eager", "llava_best"]
    assert wanted("minimind,llava_best", True) == ["minimind", "llava_best"]
    assert wanted("none", False) == []
    with pytest.raises(ValueError, match="llava_best needs --compare-hf"):
        wanted("minimind,llava_best", False)  # was: LLaVA silently left out
    with pytest.raises(ValueError, match="unknown llava"):
        wanted("minimind,llava", True)
