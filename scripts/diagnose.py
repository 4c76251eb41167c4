"""CLI: health check of a saved MiniMind-V model folder.

    python scripts/diagnose.py --model OUT/sft [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]

Prints a config summary (decoder shape, vision tower, projector, image_seq_length, vocabulary), parameter counts
(total / trainable; vision tower, projector, decoder, lm_head), the device and dtype, then runs one forward pass on
a synthetic image and a chat prompt built with the folder's processor (raw token ids when the folder has none). It
flags non-finite weights, NaN/Inf in the logits, hidden states or image features, processor/config disagreements
and image-token mismatches (the prompt's image tokens must equal image_seq_length x images), and reports the
model's own ValueError cleanly. Exit code 0 when healthy, 1 when a problem was found, 2 (with one `error:` line)
when the folder is missing or cannot be loaded. The checks are processing/diagnostics.py.
"""

import argparse
import sys

from processing.diagnostics import DTYPES, LoadError, diagnose


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="auto: bfloat16 on cuda, float32 on cpu")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        diagnosis = diagnose(args.model, device=args.device, dtype=args.dtype)
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(diagnosis.report())
    return 0 if diagnosis.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
