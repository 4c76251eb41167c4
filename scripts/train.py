"""Train MiniMind-V (any stage) with Accelerate: ``python scripts/train.py ...`` or
``accelerate launch --num_processes N scripts/train.py ...``.

Stages differ only in what trains: ``--stage pretrain`` trains the projector, ``--stage sft`` the projector and the
decoder; ``--train vision,projector,decoder`` overrides either. The final OUTPUT folder is a ``save_pretrained``
model + processor that loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` (``trust_remote_code=True``).

Resumable: ``--save-steps N`` writes ``OUTPUT/checkpoint-STEP`` atomically (weights, optimizer, schedule and RNG
states as safetensors + JSON, never pickle, plus the data position); ``--resume`` continues from the latest
complete one and reproduces the uninterrupted run, because the data order is a function of (seed, epoch) and
already-consumed batches are skipped. A fresh run refuses an output folder holding a model or an earlier run's logs
unless ``--overwrite`` (which keeps the old logs as ``*.previous-N.jsonl``). The flags are shared with
``scripts/train_sft_trl.py`` (processing/training/config.py); the trainer is processing/training/trainer.py.
"""

import logging

from processing.training.config import ACCELERATE, parse_train_args
from processing.training.trainer import local_main_process, train


def main(argv=None) -> dict:
    config = parse_train_args(argv, ACCELERATE, description=__doc__)
    # Only the main process reports progress; the others speak up for warnings.
    logging.basicConfig(level=logging.INFO if local_main_process() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train(config)


if __name__ == "__main__":
    main()
