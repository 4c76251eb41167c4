"""CLI: build a MiniMind-V checkpoint from a Qwen3 decoder folder and a CLIP/SigLIP vision folder (safetensors).

The projector is freshly initialised; everything else is copied strictly (any missing, unexpected or mis-shaped
key is an error). The output folder loads with the Auto classes and `trust_remote_code=True`. On failure it prints
one `error: ...` line on stderr, exits with status 1 and leaves no output folder behind.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qwen3", required=True, help="Qwen3 folder: config.json, safetensors weights, tokenizer")
    parser.add_argument("--vision", required=True,
                        help="CLIPModel / CLIPVisionModel / SiglipModel / SiglipVisionModel folder")
    parser.add_argument("--output", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--projector", default="mlp", choices=["linear", "mlp", "cross_attention"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the projector's initialisation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)

    # Heavy imports after argument parsing so --help stays fast.
    from transformers.utils import logging as hf_logging

    from processing.checkpoint_io import convert_qwen3_to_minimind_v

    hf_logging.set_verbosity_error()  # keep stderr to the one error line
    hf_logging.disable_progress_bar()
    try:
        output = convert_qwen3_to_minimind_v(
            args.qwen3, args.vision, args.output, projector_type=args.projector, dtype=args.dtype,
            overwrite=args.overwrite, seed=args.seed,
        )
    except Exception as error:  # noqa: BLE001 - a CLI reports every failure as one line, without a traceback
        print(f"error: {' '.join(str(error).split()) or type(error).__name__}", file=sys.stderr)
        return 1
    print(f"wrote MiniMind-V checkpoint to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
