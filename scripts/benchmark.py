"""Benchmark minimind-v against transformers' LLaVA with identical shapes, in one process.

    python scripts/benchmark.py --preset qwen3-0.6b --device cuda --compare-hf      # the H100 comparison
    python scripts/benchmark.py --preset tiny --device cpu --compare-hf             # smoke test

`--modes e2e` runs scripts/train.py's own loop (processing.training.trainer) on synthetic shapes data, padded and
packed, and reports the tokens/s its log records beside the same step alone on the same batches; `train` times the
step function on a fixed batch. For qwen3-0.6b the e2e runs train a random checkpoint of that shape with a Qwen3-style
tokenizer, built locally (nothing is downloaded). --json-out is rewritten after every measurement.

Both models are random-init, bf16 on GPU (fp32 on CPU), same vision tower (the preset's CLIP), same decoder shapes,
same projector. Measured per system: an SFT training step (vision frozen, decoder + projector trained, AdamW) in
tokens/s, MFU against --peak-tflops and peak memory; `generate` tokens/s at each --gen-batch (prompt = one image +
--prompt-text-tokens text tokens, --new-tokens new tokens, greedy, EOS disabled). LLaVA runs as most users run it
(eager, dynamic cache) and in its best mode (torch.compile for training, static cache for generate, which compiles
the decode step). Prints a table and the JSON (also written to --json-out). The measurements are
processing/benchmark.py.
"""

import argparse
import json
import logging

from processing.benchmark import format_table, run_benchmark


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen3-0.6b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--compare-hf", action="store_true", help="also run transformers' LlavaForConditionalGeneration")
    p.add_argument("--modes", default="train,generate",
                   help="comma list of train (the trainer's step on a fixed batch), generate, e2e (scripts/train.py's "
                        "loop on synthetic data, padded and packed)")
    p.add_argument("--systems", default=None,
                   help="comma list of minimind, llava_eager, llava_best (the last two need --compare-hf), or none "
                        "(e2e only). Default: minimind, plus both LLaVA modes with --compare-hf")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=640)
    p.add_argument("--label-fraction", type=float, default=0.5,
                   help="share of the text tokens (after the image) that are assistant tokens carrying labels")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--gen-batch", default="1,32", help="comma list of generate batch sizes")
    p.add_argument("--prompt-text-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--no-compile", action="store_true", help="skip every torch.compile (eager only)")
    p.add_argument("--decode-attention", choices=["module", "kernels"], default=None,
                   help="minimind-v's static-cache decode step on CUDA: the attention modules' own path or the Triton "
                        "decode-attention kernels (modeling_minimind_v/decode_attention.py). Default: the library's "
                        "own setting (fast_generate.USE_DECODE_KERNELS)")
    p.add_argument("--decode-projections", choices=["kernels", "module"], default=None,
                   help="with the decode-attention kernels, at batch <= 4: the step's projections as the Triton GEMV "
                        "kernels with the norms, SwiGLU and residual adds fused in "
                        "(modeling_minimind_v/decode_projections.py), or as the modules run them. Default: the "
                        "library's own setting (fast_generate.USE_DECODE_PROJECTIONS)")
    p.add_argument("--prefill", choices=["eager", "graph"], default=None,
                   help="minimind-v's static-cache prefill on CUDA (dense decoders): eager, or captured as a CUDA "
                        "graph per prompt shape and replayed (modeling_minimind_v/fast_generate.py, CAPTURE_PREFILL). "
                        "Default: the library's own setting")
    p.add_argument("--profile", action="store_true", help="write a Chrome trace of minimind training steps")
    p.add_argument("--profile-dir", default="benchmark_profile")
    p.add_argument("--e2e-model", default=None,
                   help="e2e: a save_pretrained folder to train (default: a fresh model of --preset with the "
                        "project's tokenizer)")
    p.add_argument("--e2e-rows", type=int, default=3000, help="e2e: synthetic training images")
    p.add_argument("--e2e-batch-size", type=int, default=32, help="e2e: rows per step")
    p.add_argument("--e2e-layouts", default="padded,packed", help="e2e: comma list of padded, packed")
    p.add_argument("--num-workers", type=int, default=8, help="e2e: DataLoader workers")
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    def write(results):  # after every measurement: a run cut short (a time limit) keeps what it measured
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(results, f, indent=2)

    try:
        results = run_benchmark(args, partial=write)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    print(format_table(results, args))
    print(json.dumps(results, indent=2))
    write(results)
    return results


if __name__ == "__main__":
    main()
