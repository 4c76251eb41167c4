"""CLI: write the decoder of a MiniMind-V checkpoint as a plain transformers Qwen3 or Llama checkpoint.

Output: config.json (model_type qwen3 or llama), model.safetensors, generation_config.json and the tokenizer files
when the input has a tokenizer. `--format auto` (the default) writes Qwen3 for a decoder with QK-norm and Llama for
one without (e.g. a model imported from SmolLM2); dense decoders only. On failure it prints one `error: ...` line on
stderr, exits with status 1 and leaves no output folder behind; an --output that is (or contains) --model is
refused. The conversion is processing/conversion/decoders.py.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MiniMind-V folder (as written by save_pretrained)")
    parser.add_argument("--output", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weight dtype of the output (default: as stored)")
    parser.add_argument("--format", default="auto", choices=["auto", "qwen3", "llama"],
                        help="output architecture (default auto: qwen3 with QK-norm, llama without)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)

    # Heavy imports after argument parsing so --help stays fast.
    from processing.conversion.decoders import export_minimind_v
    from processing.conversion.quiet import run_for_cli

    status, line = run_for_cli(export_minimind_v, "wrote decoder checkpoint to", model_dir=args.model,
                               output_dir=args.output, export_format=args.format, dtype=args.dtype,
                               overwrite=args.overwrite)
    print(line, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
