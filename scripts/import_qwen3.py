"""CLI: build a MiniMind-V checkpoint from a decoder folder (Qwen3 or Llama-architecture, e.g. SmolLM2; chosen by
its config.json model_type) and a CLIP/SigLIP vision folder (safetensors).

The projector is freshly initialised; everything else is copied strictly (any missing, unexpected or mis-shaped
key is an error). The decoder's tokenizer is kept; missing vision tokens are added. The output folder loads with the
Auto classes and `trust_remote_code=True`. On failure it prints one `error: ...` line on stderr, exits with status 1
and leaves no output folder behind; an --output that is (or contains) an input folder is refused. The conversion is
processing/conversion/assembly.py.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qwen3", "--decoder", dest="qwen3", required=True, metavar="DIR",
                        help="decoder folder (Qwen3 or Llama): config.json, safetensors weights, tokenizer")
    parser.add_argument("--vision", required=True,
                        help="CLIPModel / CLIPVisionModel / SiglipModel / SiglipVisionModel folder")
    parser.add_argument("--output", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--projector", default="mlp", metavar="TYPE",
                        help="projector type, a key of modeling_minimind_v.projector.PROJECTORS (default: mlp)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the projector's initialisation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)

    # Heavy imports after argument parsing so --help stays fast (the projector registry lives with the model).
    from modeling_minimind_v.projector import PROJECTORS
    from processing.conversion.assembly import convert_qwen3_to_minimind_v
    from processing.conversion.quiet import run_for_cli

    if args.projector not in PROJECTORS:
        parser.error(f"argument --projector: invalid choice: {args.projector!r} (choose from "
                     f"{', '.join(map(repr, PROJECTORS))})")
    status, line = run_for_cli(
        convert_qwen3_to_minimind_v, "wrote MiniMind-V checkpoint to", qwen3_dir=args.qwen3, vision_dir=args.vision,
        output_dir=args.output, projector_type=args.projector, dtype=args.dtype, overwrite=args.overwrite,
        seed=args.seed,
    )
    print(line, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
