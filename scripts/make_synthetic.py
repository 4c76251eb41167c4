"""CLI: write the synthetic coloured-shapes dataset (images + pretrain/sft/eval JSONL + meta.json) to a folder."""

import argparse
import json
import logging

from processing.synthetic import make_dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=5000, help="number of train images")
    parser.add_argument("--eval", type=int, default=400, help="number of held-out eval images (one question each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224, help="square image side in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    meta = make_dataset(args.output, args.train, args.eval, seed=args.seed, image_size=args.image_size)
    logging.getLogger("make_synthetic").info("counts: %s", json.dumps(meta["counts"]))


if __name__ == "__main__":
    main()
