"""Which distributed engine a training run uses, how many processes it has, and how the global
batch (`trainer.batch_size`) splits into per-device batches and gradient-accumulation steps.

The engine is chosen by the launcher, never by the spec: `accelerate launch --config_file
configs/accelerate/{ddp,deepspeed_zero2,deepspeed_zero3,fsdp}.yaml` sets it in the environment.
The spec's batch sizes are global, so changing the number of GPUs never changes what one step
trains on."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import compat

DEEPSPEED_KEY = "distributed_type: DEEPSPEED (the accelerate config) / ACCELERATE_USE_DEEPSPEED"
FSDP_KEY = "distributed_type: FSDP (the accelerate config) / ACCELERATE_USE_FSDP"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def requested_engine() -> str:
    """'deepspeed_zero<n>', 'fsdp', or 'ddp' (one process is 'ddp' of one: a plain loop)."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return f"deepspeed_zero{int(os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', 2))}"
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return "ddp"


def check_available(engine: str) -> None:
    """Fail at start, naming the launcher's key, when the engine's library is missing."""
    if engine.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"the launcher asks for DeepSpeed ({DEEPSPEED_KEY}) but it cannot be imported ({e}); "
                               "`pip install deepspeed`, or launch with configs/accelerate/ddp.yaml") from None
        compat.deepspeed_on_cpu()


def engine_name(engine: str) -> str:
    return {"ddp": "DDP", "fsdp": "FSDP"}.get(engine) or engine.replace("deepspeed_zero", "DeepSpeed ZeRO-")


def check_shardable(engine: str, cg) -> None:
    """Fail at start, naming the block, when the engine could not shard its weights: DeepSpeed's
    ZeRO flattens parameters into byte buffers and FSDP's fully_shard splits dim 0, and neither
    takes a 0-d (scalar) parameter; the run would die in its first step on every rank."""
    if not sharded(engine):
        return
    scalars = [(bid, name) for bid, block in cg.model.items() for name, p in block.named_parameters() if p.dim() == 0]
    if scalars:
        listed = ", ".join(f"blocks.{bid} ({cg.spec.blocks[bid]['type']}): parameter '{name}'" for bid, name in scalars)
        key = FSDP_KEY if engine == "fsdp" else DEEPSPEED_KEY
        raise ValueError(f"the launcher asks for {engine_name(engine)} ({key}), which cannot shard 0-d (scalar) "
                         f"parameters: {listed}; give the parameter shape [1] in the block, or launch with "
                         "configs/accelerate/ddp.yaml")


@dataclass
class Layout:
    """How each stream's global batch is laid out over processes and accumulation steps."""

    engine: str
    processes: int
    machines: int
    grad_accum: int
    global_batch: dict = field(default_factory=dict)  # stream -> samples per optimizer step, all processes
    per_device: dict = field(default_factory=dict)  # stream -> samples per forward on one process

    def describe(self) -> str:
        streams = ", ".join(f"{s}: {self.global_batch[s]} = {self.processes} x {self.per_device[s]}"
                            + (f" x {self.grad_accum}" if self.grad_accum > 1 else "") for s in self.global_batch)
        name = "single process" if self.engine == "ddp" and self.processes == 1 else engine_name(self.engine)
        return (f"engine {name}, {self.processes} process(es) on {self.machines} machine(s), gradient accumulation "
                f"{self.grad_accum}; global batch = processes x per-device batch"
                + (" x accumulation" if self.grad_accum > 1 else "") + f" ({streams})")


def derive_layout(global_batches: dict, keys: dict, engine: str, processes: int, grad_accum: int = 1,
                  machines: int = 1) -> Layout:
    """global_batches: stream -> global batch; keys: stream -> the spec key that set it (for errors)."""
    if grad_accum < 1:
        raise ValueError(f"gradient accumulation must be >= 1, got {grad_accum} (accelerate launch "
                         "--gradient_accumulation_steps / ACCELERATE_GRADIENT_ACCUMULATION_STEPS)")
    per_device = {}
    for s, b in global_batches.items():
        split = processes * grad_accum
        if b % split:
            raise ValueError(f"{keys[s]} is {b}, the global batch of stream '{s}', but it must split evenly over "
                             f"{processes} process(es) x {grad_accum} accumulation step(s); choose a multiple of {split}")
        per_device[s] = b // split
    return Layout(engine, processes, machines, grad_accum, dict(global_batches), per_device)


def launcher_grad_accum() -> int:
    """Gradient-accumulation steps asked of the launcher (accelerate's own setting), default 1."""
    value = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS is {value!r}, expected an integer") from None


def machine_count() -> int:
    """Machines of the run (torchrun / accelerate export the group's layout)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    return max(1, world // max(local, 1))


def sharded(engine: str) -> bool:
    """Engines whose weights or optimizer state live in shards on the processes."""
    return engine != "ddp"


def fill_deepspeed_config(conf: dict, layout: Layout, grad_clip: float) -> None:
    """DeepSpeed's "auto" values from the layout and the trainer section. DeepSpeed checks
    train_batch_size == micro-batch x accumulation x processes, so all three are set together."""
    micro = max(layout.per_device.values())
    conf["train_micro_batch_size_per_gpu"] = micro
    conf["gradient_accumulation_steps"] = layout.grad_accum
    conf["train_batch_size"] = micro * layout.grad_accum * layout.processes
    if conf.get("gradient_clipping", "auto") == "auto":
        conf["gradient_clipping"] = grad_clip
    zero = conf.setdefault("zero_optimization", {})
    # buckets DeepSpeed would size from model.config.hidden_size, which a graph of blocks lacks
    for key, value in (("reduce_bucket_size", 5e8), ("stage3_prefetch_bucket_size", 5e7),
                       ("stage3_param_persistence_threshold", 1e5)):
        if zero.get(key) == "auto":
            zero[key] = int(value)
