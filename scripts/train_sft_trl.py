"""Supervised fine-tuning of a saved MiniMind-V checkpoint with TRL's ``SFTTrainer``, optionally with LoRA.

    python scripts/train_sft_trl.py --model DIR --data FILE.jsonl --output OUT [--lora [--merge]]
    accelerate launch --num_processes N scripts/train_sft_trl.py ...       (data parallel, via Trainer)

Same task as ``scripts/train.py --stage sft`` (projector + decoder train, vision frozen, assistant-only loss), but
through the Hugging Face stack: rows converted to TRL's multimodal ``messages`` + ``images`` format, labels on the
assistant replies and their ``<|im_end|>`` only (never on image, vision start/end or pad tokens).

Outputs:
* full fine-tuning: OUT is a ``save_pretrained`` folder (model + processor + remote code);
* ``--lora``: LoRA on the decoder's linear layers, projector trained in full, vision frozen; OUT holds the adapter
  (+ processor) for PEFT;
* ``--lora --merge``: the adapter goes to OUT/adapter and OUT holds the merged model + processor, which loads like any
  other checkpoint with the Auto classes.

The flags are shared with ``scripts/train.py`` (processing/training/config.py); the TRL set-up is
processing/training/trl.py.
"""

import logging

from processing.training.config import TRL, parse_train_args
from processing.training.trl import train_with_trl


def main(argv=None) -> dict:
    config = parse_train_args(argv, TRL, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train_with_trl(config)


if __name__ == "__main__":
    main()
