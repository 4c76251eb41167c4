"""TrainConfig: every flag of both trainers, defined once.

``scripts/train.py`` (the Accelerate trainer) and ``scripts/train_sft_trl.py`` (TRL, optionally LoRA) build their
argument parsers from the fields of :class:`TrainConfig`; a field says which trainers have it, so a flag the two
share (``--data``, ``--lr``, ``--batch-size``, ...) has one name, default and help. Flag names and defaults are a
contract: scripts, docs and users' launch files depend on them. The config is saved as JSON (``train_config.json``)
with every checkpoint and the final output, so a run says how it was made.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .parts import STAGE_PARTS, parse_parts

ACCELERATE = "accelerate"  # scripts/train.py
TRL = "trl"  # scripts/train_sft_trl.py
TRAINERS = (ACCELERATE, TRL)
CONFIG_FILE = "train_config.json"
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _flag(default, help: str, trainers: Sequence[str] = TRAINERS, **argparse_kwargs):
    """A TrainConfig field that is the command-line flag ``--field-name`` of `trainers`."""
    return field(default=default, metadata={"help": help, "trainers": tuple(trainers), "argparse": argparse_kwargs})


@dataclass
class TrainConfig:
    """Every training setting; the field name with dashes is its flag (``batch_size`` -> ``--batch-size``)."""

    # ---- what to train
    config: str | None = _flag(None, "preset name (tiny, small, base, moe, ...) or config JSON: a fresh model",
                               trainers=(ACCELERATE,))
    model: str | None = _flag(None, "save_pretrained folder with model + processor to start from")
    stage: str = _flag("sft", "pretrain: projector only; sft: projector + decoder", trainers=(ACCELERATE,),
                       choices=sorted(STAGE_PARTS))
    train: str | None = _flag(None, "comma-separated parts to train (vision,projector,decoder); overrides --stage",
                              trainers=(ACCELERATE,))
    lora: bool = _flag(False, "train LoRA adapters on the decoder instead of all weights", trainers=(TRL,),
                       action="store_true")
    lora_r: int = _flag(8, "LoRA rank", trainers=(TRL,), type=int)
    lora_alpha: int = _flag(16, "LoRA alpha (scale alpha / r)", trainers=(TRL,), type=int)
    lora_dropout: float = _flag(0.05, "dropout on the LoRA input", trainers=(TRL,), type=float)
    merge: bool = _flag(False, "with --lora: write the merged model to OUTPUT (the adapter to OUTPUT/adapter)",
                        trainers=(TRL,), action="store_true")

    # ---- data and output
    data: str | None = _flag(None, "training rows (.jsonl or .parquet)")
    image_root: str | None = _flag(None, "folder for relative image paths (default: the data file's folder)")
    eval_data: str | None = _flag(None, "rows for an eval loss after every epoch", trainers=(ACCELERATE,))
    output: str | None = _flag(None, "output folder: the final model (or adapter), checkpoints, logs")
    overwrite: bool = _flag(False, "a fresh run may replace the model in a non-empty --output (its train/eval logs "
                                   "are kept as *.previous-N.jsonl, never deleted)", trainers=(ACCELERATE,),
                            action="store_true")
    allow_outside_image_root: bool = _flag(False, "let rows name images outside --image-root (../, absolute paths, "
                                                  "symlinks); by default such rows are skipped as "
                                                  "image_outside_root", action="store_true")
    max_length: int | None = _flag(None, "rows with more tokens are dropped whole, never truncated (default: "
                                         "train.py the model's maximum, train_sft_trl.py no limit)", type=int)
    cache_images: bool | None = _flag(None, "keep decoded images in memory (default: when they fit 2 GiB)",
                                      trainers=(ACCELERATE,), action=argparse.BooleanOptionalAction)
    packing: bool = _flag(False, "padding-free batches: rows concatenated with per-row position_ids",
                          trainers=(ACCELERATE,), action=argparse.BooleanOptionalAction)
    num_workers: int = _flag(0, "DataLoader workers (0: load in the main process)", type=int)

    # ---- schedule and optimizer
    epochs: float = _flag(1.0, "passes over the data (train.py: a whole number)", type=float)
    max_steps: int = _flag(0, "optimizer steps; > 0 overrides --epochs", type=int)
    batch_size: int = _flag(16, "rows per micro-batch per process", type=int)
    grad_accum: int = _flag(1, "micro-batches per optimizer step", type=int)
    lr: float = _flag(2e-4, "peak learning rate", type=float)
    projector_lr: float | None = _flag(None, "learning rate of the projector (default: --lr)", trainers=(ACCELERATE,),
                                       type=float)
    weight_decay: float = _flag(0.01, "AdamW weight decay (not on biases, norms and embeddings)", type=float)
    warmup_ratio: float = _flag(0.03, "fraction of steps of linear warmup, then cosine", type=float)
    min_lr_ratio: float = _flag(0.0, "cosine decays to this fraction of the lr", trainers=(ACCELERATE,), type=float)
    max_grad_norm: float = _flag(1.0, "gradient clipping norm; <= 0 disables clipping", type=float)
    seed: int = _flag(42, "seed of the initialisation, the data order and dropout", type=int)

    # ---- precision and memory
    mixed_precision: str = _flag("no", "autocast dtype over fp32 master weights", trainers=(ACCELERATE,),
                                 choices=("no", "bf16", "fp16"))
    bf16: bool | None = _flag(None, "bf16 autocast (default: on when a CUDA GPU supports it, off on CPU)",
                              trainers=(TRL,), action=argparse.BooleanOptionalAction)
    gradient_checkpointing: bool = _flag(False, "recompute activations in the backward pass (less memory)",
                                         action=argparse.BooleanOptionalAction)
    compile: bool | None = _flag(None, "torch.compile the training step (default: on with a CUDA GPU, off on CPU)",
                                 action=argparse.BooleanOptionalAction)
    num_threads: int | None = _flag(None, "torch CPU threads per process (tiny models on a busy CPU often run "
                                          "fastest with 1)", trainers=(ACCELERATE,), type=int)

    # ---- checkpoints and logging
    save_steps: int = _flag(0, "checkpoint every N optimizer steps (0: none; the final output is always saved)",
                            type=int)
    save_total_limit: int | None = _flag(None, "keep only the newest N checkpoints", trainers=(ACCELERATE,),
                                         type=int)
    resume: str | None = _flag(None, "continue from the latest complete checkpoint in OUTPUT, or from the given "
                                     "checkpoint folder", trainers=(ACCELERATE,), nargs="?", const="latest")
    log_with: str = _flag("none", "experiment tracker", trainers=(ACCELERATE,),
                          choices=("none", "tensorboard", "wandb"))
    logging_steps: int = _flag(10, "log the loss every N steps", trainers=(TRL,), type=int)

    # ------------------------------------------------------------------ validation
    def problems(self, trainer: str) -> list[str]:
        """What is wrong with this config for `trainer`, one message per problem (empty: usable)."""
        found = []
        positive = ["batch_size", "grad_accum"] + (["lora_r", "lora_alpha", "logging_steps"] if trainer == TRL else [])
        found += [f"{_flag_name(name)} must be >= 1" for name in positive if getattr(self, name) < 1]
        if not 0.0 <= self.warmup_ratio < 1.0:
            found.append("--warmup-ratio must be in [0, 1)")
        for name in ("data", "eval_data"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                found.append(f"{_flag_name(name)} {path}: no such file")
        if self.data is None or self.output is None:
            found.append("--data and --output are required")
        return found + (self._accelerate_problems() if trainer == ACCELERATE else self._trl_problems())

    def _accelerate_problems(self) -> list[str]:
        found = []
        if (self.config is None) == (self.model is None):
            found.append("give exactly one of --config (a fresh model) and --model (a saved one)")
        if self.log_with != "none" and importlib.util.find_spec(TRACKER_PACKAGES[self.log_with]) is None:
            package = TRACKER_PACKAGES[self.log_with]
            found.append(f"--log-with {self.log_with} needs the '{package}' package (pip install {package}), "
                         "or use --log-with none")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            found.append("--mixed-precision fp16 needs a CUDA GPU; use bf16 (or no) on CPU")
        if self.epochs < 1 or self.epochs != math.floor(self.epochs):
            found.append("--epochs must be a whole number >= 1")
        if self.train:
            try:
                parse_parts(self.train)
            except ValueError as error:
                found.append(str(error))
        return found

    def _trl_problems(self) -> list[str]:
        found = []
        if self.merge and not self.lora:
            found.append("--merge needs --lora (without --lora OUTPUT already is a full checkpoint)")
        if self.epochs <= 0 and self.max_steps <= 0:
            found.append("--epochs must be > 0 (or give --max-steps)")
        if self.model is None or not (Path(self.model) / "config.json").is_file():
            found.append(f"--model {self.model}: no config.json (expected a save_pretrained folder)")
        return found

    def check(self, trainer: str) -> None:
        """Raise ValueError with every problem of this config for `trainer`."""
        found = self.problems(trainer)
        if found:
            raise ValueError("; ".join(found))

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``train_config.json`` into `directory`."""
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TrainConfig":
        return cls(**json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8")))


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def trainer_fields(trainer: str) -> list[dataclasses.Field]:
    """The TrainConfig fields that are flags of `trainer`, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if trainer in f.metadata["trainers"]]


def build_parser(trainer: str, description: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `trainer` (ACCELERATE or TRL), built from the TrainConfig fields it has."""
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    # train.py starts from a preset or from a saved folder (exactly one); train_sft_trl.py from a saved folder.
    source = parser.add_mutually_exclusive_group(required=True) if trainer == ACCELERATE else parser
    required = {"data", "output"} | ({"model"} if trainer == TRL else set())
    for spec in trainer_fields(trainer):
        target = source if spec.name in ("config", "model") else parser
        kwargs = dict(spec.metadata["argparse"], help=spec.metadata["help"], default=spec.default)
        if spec.name in required:
            kwargs["required"] = True
        target.add_argument(_flag_name(spec.name), dest=spec.name, **kwargs)
    return parser


def parse_train_args(argv: Sequence[str] | None, trainer: str, description: str | None = None) -> TrainConfig:
    """Parse `argv` (None: sys.argv) with `trainer`'s flags into a checked TrainConfig; exits with status 2 and the
    problem on stderr, as argparse does, when the flags cannot be used."""
    parser = build_parser(trainer, description)
    config = TrainConfig(**vars(parser.parse_args(argv)))
    found = config.problems(trainer)
    if found:
        parser.error(found[0])
    return config


__all__ = [
    "ACCELERATE", "CONFIG_FILE", "TRAINERS", "TRL", "TrainConfig", "build_parser", "parse_train_args",
    "trainer_fields",
]
