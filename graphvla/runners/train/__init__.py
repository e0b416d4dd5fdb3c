"""`graphvla train`: the training runner (loop, optimizer/schedule, co-training streams,
checkpoints). Entry point: `train(spec, bundle, run_dir, ...)`."""
from .loop import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "NonFiniteLossError"]
