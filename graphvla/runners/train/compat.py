"""Workarounds for Accelerate 1.15 (and DeepSpeed under it), one function each, so the trainer reads
as if they were not needed. Most are for processes without GPUs (CPU runs, CI's gloo groups):
Accelerate assumes GPUs in several places and would otherwise silently train another engine than
the launcher's config asks for. Each says why; drop one when the library no longer needs it."""
from __future__ import annotations

import os


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def deepspeed_on_cpu() -> None:
    """Without a GPU, DeepSpeed must be told to use its CPU accelerator (gloo) before it is
    imported by Accelerate, as in CI; a value the user set is kept."""
    if not has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def accelerator_cpu_flag(engine: str) -> bool:
    """Accelerator(cpu=...): without GPUs, DDP and FSDP join the processes as MULTI_CPU (gloo).
    DeepSpeed must not get cpu=True: Accelerate would silently fall back to DDP."""
    return not engine.startswith("deepspeed") and not has_cuda()


def allow_precision_change(precision: str) -> None:
    """Accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed precision; a second trainer in the same process (tests, notebooks) needs it reset.
    The process group is left alone."""
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def fix_process_counts(accelerator) -> None:
    """Accelerate 1.15 under DeepSpeed without a GPU backend leaves its counters at process 0 of 1
    on every process, although DeepSpeed has joined all of them in a torch.distributed group.
    Data sharding, "main process only" writes, loss averaging and DeepSpeed's own batch
    arithmetic all read these counters, so they are set from the process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    state = accelerator.state
    if (state.process_index, state.num_processes) == (rank, world):
        return
    from accelerate.state import PartialState

    local = int(os.environ.get("LOCAL_RANK", rank))
    for shared in (PartialState._shared_state, state.__dict__):
        shared.update(process_index=rank, num_processes=world, local_process_index=local)


def enable_fsdp_without_gpus(accelerator, engine: str) -> None:
    """Accelerate 1.15 turns FSDP on only for GPU-like backends; on CPU processes (gloo, as in CI)
    it would silently train plain DDP. torch's FSDP2 runs on CPU, so the state is switched to FSDP
    with the plugin the launcher's config describes (fsdp_config: ...)."""
    if engine != "fsdp" or has_cuda():
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.state.distributed_type == DistributedType.FSDP:
        return
    AcceleratorState._shared_state.update(distributed_type=DistributedType.FSDP,
                                          fsdp_plugin=FullyShardedDataParallelPlugin())
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def finish_trackers(accelerator) -> None:
    """End a run's TensorBoard logging. Not accelerator.end_training(): it would also destroy the
    process group, which outlives one run (a resumed Trainer in the same launch, the tests)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()  # a later run() starts its own
