"""The main job, end to end on a CPU with no downloads: make the synthetic shapes task, build the tokenizer, build a
small MiniMind-V, train it, evaluate it on the held-out split, reload it from its saved folder with the Auto classes
and answer a question about a new image through `pipeline("image-text-to-text")`, and draw the loss curve.

    python scripts/demo.py [--output DIR]

Everything lands in DIR (default: ./minimind-v-demo): data/, tokenizer/, model/ (the trained save_pretrained folder),
loss_curve.png, eval.json and demo_summary.json. The last line printed is the held-out accuracy; the exit status is
1 when it is below --min-accuracy. The steps are processing/demo.py.
"""

import argparse
import json
import logging
import sys

from processing.demo import DemoConfig, accuracy_line, run_demo

DEFAULTS = DemoConfig()


def parse_args(argv=None) -> DemoConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=DEFAULTS.output)
    p.add_argument("--train-images", type=int, default=DEFAULTS.train_images, help="more images, less memorisation")
    p.add_argument("--eval-images", type=int, default=DEFAULTS.eval_images)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--min-accuracy", type=float, default=DEFAULTS.min_accuracy,
                   help="exit with status 1 when held-out exact match is below this (0 disables the check)")
    return DemoConfig(**vars(p.parse_args(argv)))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    summary = run_demo(config)
    print(json.dumps(summary, indent=2))
    print(accuracy_line(summary, config.min_accuracy))  # the result, always the last line
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
