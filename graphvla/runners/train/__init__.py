"""`graphvla train`: the training runner (loop, optimizer/schedule, co-training streams,
checkpoints). Entry points: `train(spec, bundle, run_dir, ...)`, or `Trainer(compile_for_training(spec),
bundle, run_dir, ...)`."""
from .loop import NonFiniteLossError, Trainer, TrainResult, compile_for_training, train

__all__ = ["train", "Trainer", "TrainResult", "NonFiniteLossError", "compile_for_training"]
