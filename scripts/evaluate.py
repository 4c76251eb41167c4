"""CLI: exact-match accuracy of a saved MiniMind-V model on an eval JSONL file, overall and per question type.

    python scripts/evaluate.py --model OUT/sft --data data/eval.jsonl [--batch-size 64] [--max-new-tokens 8]
        [--limit N] [--image-root DIR] [--output result.json] [--device cpu|cuda]

The model and processor load through the Auto classes with trust_remote_code. Relative image paths resolve against
--image-root (default: the data file's folder, where `make_dataset` puts `images/`). Prints one JSON object
`{"overall", "per_type", "counts", "correct", "n", "skipped", "skip_reasons", "examples"}` on stdout; logs go to
stderr. Exit code 1 when no row could be evaluated. The evaluator is processing/evaluation/exact_match.py.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from processing.evaluation.exact_match import evaluate_saved_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder (model + processor)")
    parser.add_argument("--data", required=True, help="eval JSONL file (conversations + image + type rows)")
    parser.add_argument("--image-root", default=None, help="folder for relative image paths (default: the data's)")
    parser.add_argument("--allow-outside-image-root", action="store_true",
                        help="let rows name images outside --image-root (default: such rows are skipped)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")
    parser.add_argument("--examples", type=int, default=5, help="number of example predictions in the result")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    data = Path(args.data)
    if not data.is_file():
        print(f"error: data file {data} does not exist", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 0:
        print(f"error: --limit must be >= 0, got {args.limit}", file=sys.stderr)
        return 2
    result = evaluate_saved_model(args.model, data, image_root=args.image_root, limit=args.limit, device=args.device,
                                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                  num_examples=args.examples, allow_outside_root=args.allow_outside_image_root)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    if result["n"] == 0:
        print(f"error: no row of {data} could be evaluated (skipped: {result['skip_reasons']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
