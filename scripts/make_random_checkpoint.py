"""CLI: write a random decoder folder (Qwen3 or Llama, tiny or shaped like SmolLM2-135M / Qwen3-0.6B) and a random
CLIP or SigLIP vision folder, so that scripts/import_qwen3.py (and the training that follows) can be tried without
downloading anything:

    python scripts/make_random_checkpoint.py --family llama --shape tiny --output checkpoints/random
    python scripts/import_qwen3.py --decoder checkpoints/random/decoder --vision checkpoints/random/vision \
        --output checkpoints/minimind-v-random

Output: OUTPUT/decoder (config.json, model.safetensors, a small byte-level BPE tokenizer with ChatML specials) and
OUTPUT/vision, written atomically. The builders are processing/conversion/random_checkpoints.py.
"""

import argparse
import sys

FAMILIES = ("qwen3", "llama")
SHAPES = ("tiny", "smollm2-135m", "qwen3-0.6b")
VISION = {"clip": "clip_full", "siglip": "siglip_vision"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--family", default="llama", choices=FAMILIES, help="decoder architecture (default llama)")
    parser.add_argument("--shape", default="tiny", choices=SHAPES, help="decoder shape (default tiny)")
    parser.add_argument("--vision", default="clip", choices=list(VISION), help="vision tower (default clip)")
    parser.add_argument("--vision-shape", default="tiny", choices=["tiny", "base"],
                        help="tiny: 32 px, 2 layers; base: ViT-B/16 at 224 px (default tiny)")
    parser.add_argument("--untied", action="store_true", help="a separate lm_head instead of tied embeddings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)

    # Heavy imports after argument parsing so --help stays fast.
    from processing.conversion.quiet import run_for_cli
    from processing.conversion.random_checkpoints import make_random_pair

    def build(**kwargs):
        return make_random_pair(**kwargs)[0].parent

    status, line = run_for_cli(build, "wrote decoder/ and vision/ into", output_dir=args.output, family=args.family,
                               shape=args.shape, vision_kind=VISION[args.vision], vision_shape=args.vision_shape,
                               tied=not args.untied, seed=args.seed, overwrite=args.overwrite)
    print(line, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
