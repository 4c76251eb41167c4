"""CLI: ask a saved MiniMind-V model a few general-knowledge questions (text only, greedy) and report which answers
contain the expected word: the check that a model built on a pretrained decoder (e.g. SmolLM2) still answers plain
text questions after import and after training on images.

    python scripts/probe_text.py --model runs/smol-sft

Prints one JSON object per question ({question, expected, answer, correct}) and a last line `correct: K/N`. The
questions are processing/smollm2.py's GENERAL_KNOWLEDGE.
"""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved MiniMind-V folder (model + processor)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="ask only the first N questions")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)

    # Heavy imports after argument parsing so --help stays fast.
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from processing.smollm2 import GENERAL_KNOWLEDGE, general_knowledge

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=True).to(device).eval()
        processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    except (OSError, ValueError) as error:
        print(f"error: cannot load a model and processor from {args.model}: {error}", file=sys.stderr)
        return 1
    questions = GENERAL_KNOWLEDGE[: args.limit] if args.limit is not None else GENERAL_KNOWLEDGE
    results = general_knowledge(model, processor, questions, max_new_tokens=args.max_new_tokens)
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    print(f"correct: {sum(r['correct'] for r in results)}/{len(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
