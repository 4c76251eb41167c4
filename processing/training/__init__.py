"""Training MiniMind-V: one flag set (config.py) for the Accelerate trainer (trainer.py) and the TRL/PEFT trainer
(trl.py), and the pieces they share: parts and parameter counts, optimizer and schedule, run checkpoints, the step
log, and loading the model with its processor. Import the submodule you need; this package imports nothing."""
