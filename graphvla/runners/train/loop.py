"""The trainer, top to bottom. `train(spec, bundle, run_dir)` compiles the spec's graph (seeded:
every rank starts from the same weights) and hands it with the data to `Trainer`, whose __init__
is a list of named setup steps (accelerator, data feeds, optimizer, resume, prepare) and whose
`run()` is the loop: each step picks a stream, draws that stream's batch, runs
`cg.train[stream](**batch)` and steps AdamW on the total loss at the lr `lr_at(step)` gives. It
knows nothing about heads or backbones.

Accelerate places the model, wraps it for DDP / DeepSpeed / FSDP and syncs gradients; on one CPU
process it is a thin pass-through. Its workarounds are in compat.py."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...blocks.lora import save_adapters
from ...policy.caches import batch_size
from ...policy.plain_data import plain_data
from ...policy import checkpoint as C
from . import compat
from . import sharded as S
from . import dataio
from . import engine as E
from .optim import block_param_groups, build_optimizer, set_lrs
from .precision import TrainModes, keep_fp32_masters
from .streams import StreamBatches, StreamSchedule

HISTORY_TAIL = 1000  # loss records kept in trainer_state.json


def train(spec, bundle, run_dir, **kwargs) -> TrainResult:
    """Train `spec` (a Spec) on `bundle` (a graphvla.data DataBundle) into run_dir.
    kwargs: those of Trainer (resume, stop_after, normalizer, progress, collate, encode_in_workers)."""
    return Trainer.from_spec(spec, bundle, run_dir, **kwargs).run()


def compile_for_training(spec):
    """The spec's graph on the CPU, compiled right after seeding torch with trainer.seed, so every
    rank (and every rerun) starts from identical initial weights."""
    from accelerate.utils import set_seed

    from ...compiler.compile import compile_graph

    set_seed(spec.section("trainer")["seed"])
    return compile_graph(spec, device="cpu")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf. Raised before the optimizer step of a checked step; `run()` checks
    every trainer.log_every steps and before every save (checked_at), so no bad weights are saved."""

    def __init__(self, step: int, stream: str, term: str, value: float, checked_at: int | None = None):
        self.step, self.stream, self.term, self.value = step, stream, term, value
        self.checked_at = checked_at
        when = ("stopped before the optimizer step" if checked_at is None else
                f"found by the check before step {checked_at} (losses are read every trainer.log_every steps "
                f"and before every save, so no checkpoint after step {step - 1} is written)")
        super().__init__(f"step {step}: loss '{term}' of stream '{stream}' is {value}; {when} (last good checkpoint "
                         f"kept). Check the data (NaN/inf values), lower the lr or tighten trainer.grad_clip")


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed in total
    history: list = field(default_factory=list)  # this session's records {step, stream, loss, losses}
    checkpoint: Path | None = None
    samples: int = 0  # samples trained on in this session (all processes)
    seconds: float = 0.0  # wall time of this session's steps (logging included, checkpoint writes not)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class GraphTrainModule(nn.Module):
    """What Accelerate wraps: the blocks (all parameters) plus the per-stream train graphs,
    which call the same block modules. The graphs are kept out of the module tree so each
    parameter is registered once."""

    def __init__(self, cg):
        super().__init__()
        self.blocks = cg.model
        self._graphs = dict(cg.train)

    def forward(self, stream: str, batch: dict) -> dict:
        return self._graphs[stream](**batch)


class Trainer:
    """One training session of a compiled graph on a DataBundle: set up, optionally resume, then
    `run()` until trainer.max_steps (or stop_after steps of this session), checkpointing on the way.

    cg: the graph from `compile_for_training(spec)` (Trainer.from_spec does both). resume: True (the
    run's latest checkpoint) or a checkpoint path. normalizer / collate: replace the data layer's.
    encode_in_workers=False normalizes and encodes in the step instead of in the DataLoader workers."""

    def __init__(self, cg, bundle, run_dir, *, resume=False, stop_after=None, normalizer=None, progress=True,
                 collate=None, encode_in_workers=True):
        self.cg, self.spec, self.run_dir = cg, cg.spec, Path(run_dir)
        self.cfg = self.spec.section("trainer")
        self.stop_after, self.progress = stop_after, progress
        # fp32 masters for blocks loaded in bf16 (before the optimizer and a resume see them)
        self.low_precision = keep_fp32_masters(cg.model)
        self.modes = TrainModes(cg.model)
        self.schedule = StreamSchedule(stream_ratios(cg, self.cfg))
        self.engine, self.accelerator = start_accelerator(cg, self.cfg, self.run_dir)
        self.layout = batch_layout(self.cfg, self.schedule.ratios, self.engine, self.accelerator)
        self.normalizer = normalizer if normalizer is not None else default_normalizer(bundle, self.cfg)
        self.normalizer.check_compatible(self.spec)
        self.preprocess, self.postprocess = dataio.pipelines(cg, self.normalizer)  # collate runs; checkpoints save
        # the preprocess pipeline (normalization, the blocks' processor steps) runs where batches are
        # collated (DataLoader workers with num_workers > 0), so the step receives the graph's tensors;
        # encode_in_workers=False runs it in the step
        self.normalize_in_step = not encode_in_workers
        self.feeds, self.inputs = stream_feeds(cg, bundle, self.cfg, self.layout, self.accelerator,
                                               self.preprocess, collate, encode_in_workers)
        self.module = GraphTrainModule(cg)
        self.optimizer = block_optimizer(cg, self.cfg)
        self._lr_target = self.optimizer  # the torch optimizer whose groups set_lrs sets (under any engine)
        self.step, self.history, self.history_tail = 0, [], []
        self._asset_hashes = {}  # sha256 of referenced base weights, computed once per run
        self._pending = []  # (record, loss names, device tensor) of steps whose losses are not read yet
        self.resumed_from = checkpoint_to_resume(self.run_dir, resume, self.accelerator.is_main_process)
        rng = None
        if self.resumed_from is not None:
            self.step, self.history_tail, rng = load_resume_state(
                self.resumed_from, cg, self.optimizer, self.feeds, self.engine, self.accelerator)
        self.model, self.optimizer = prepare(self.accelerator, self.module, self.optimizer, self.layout, self.cfg)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if self.resumed_from is not None and E.sharded(self.engine):
            S.load_engine_state(self.accelerator, self.resumed_from)  # the shards of weights and optimizer state
        seed_processes(self.cfg["seed"], self.accelerator, rng)

    @classmethod
    def from_spec(cls, spec, bundle, run_dir, **kwargs) -> "Trainer":
        """Compile `spec` for training (seeded) and set up a Trainer on it."""
        return cls(compile_for_training(spec), bundle, run_dir, **kwargs)

    # the loop ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        max_steps = cfg["max_steps"]
        end = max_steps if self.stop_after is None else min(max_steps, self.step + self.stop_after)
        acc.init_trackers("logs")  # the main process only
        bar = _progress(max_steps, self.step, enabled=acc.is_main_process and self.progress)
        last_ckpt, window, t0 = self.resumed_from, [], time.perf_counter()
        samples, saving, start = 0, 0.0, time.perf_counter()
        try:
            while self.step < end:
                nxt = self.step + 1  # losses are read on the host only where they are logged or saved
                rec = self.train_step(check=nxt % cfg["log_every"] == 0 or nxt % cfg["save_every"] == 0 or nxt == end)
                samples += rec["samples"]
                rec["entry"] = {k: rec[k] for k in ("step", "stream", "loss", "losses")}  # filled when checked
                self.history.append(rec["entry"])
                window.append(rec)
                if self.step % cfg["log_every"] == 0 or self.step == end:
                    dt = max(time.perf_counter() - t0, 1e-9)
                    rate = sum(r["samples"] for r in window) / dt
                    acc.log(_scalars(window, rate), step=self.step)  # the main process only
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", samples_s=f"{rate:.1f}")
                    window, t0 = [], time.perf_counter()
                bar.update(1)
                if self.step % cfg["save_every"] == 0 or self.step == end:
                    t_save = time.perf_counter()
                    last_ckpt = self.save()
                    saving += time.perf_counter() - t_save
        finally:
            for feed in self.feeds.values():
                feed.close()
            bar.close()
            compat.finish_trackers(acc)
        return TrainResult(self.run_dir, self.step, self.history, last_ckpt, samples,
                           time.perf_counter() - start - saving)

    def train_step(self, check: bool = True) -> dict:
        """One optimizer step on the stream the schedule picks. Returns the step's record.

        check=True reads the losses on the host (a sync) and raises NonFiniteLossError before the
        optimizer step; check=False keeps them on the device (the record's loss is filled, and
        checked, by the next checked step: `check_pending()`), so the accelerator never waits."""
        if check:
            self.check_pending(checked_at=self.step + 1)  # steps trained unchecked since the last check
        self.modes.apply()  # every step: an inference (Policy) in between leaves blocks in eval
        stream = self.schedule.stream_at(self.step)
        acc, accum = self.accelerator, self.layout.grad_accum
        set_lrs(self._lr_target, self.step, self.cfg)  # a pure function of the step: resume needs no state
        lrs = {g.get("name", "group"): g["lr"] for g in self.optimizer.param_groups}  # what this step trains with
        mean, samples = None, 0
        for _ in range(accum):  # micro-batches; Accelerate syncs gradients and steps on the last one only
            with acc.accumulate(self.model):
                batch = self.feeds[stream].next()
                if self.normalize_in_step:
                    batch = self.preprocess(batch)
                batch = dataio.fit_batch(batch, *self.inputs[stream], stream)
                batch = dataio.to_device(batch, acc.device)
                out = self.model(stream, batch)
                names = list(out["losses"])
                values = torch.stack([out["loss"].detach().float()] + [out["losses"][n].detach().float() for n in names])
                if acc.num_processes > 1:
                    values = acc.reduce(values, "mean")  # every rank then takes the same decision
                if check:
                    _raise_if_non_finite(values.tolist(), names, self.step + 1, stream, self.optimizer)
                acc.backward(out["loss"])
                if acc.sync_gradients and self.cfg["grad_clip"] > 0:
                    acc.clip_grad_norm_(self.params, self.cfg["grad_clip"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            samples += (batch_size(batch) or 0) * acc.num_processes
            mean = values if mean is None else mean + values
        mean = mean / accum
        self.step += 1
        rec = {"step": self.step, "stream": stream, "loss": None, "losses": None, "samples": samples, "lrs": lrs}
        self._pending.append((rec, names, mean))
        if check:
            self.check_pending()
        return rec

    def check_pending(self, checked_at: int | None = None) -> None:
        """Read the losses of the steps not read yet (one host sync for all of them), fill their
        records and raise NonFiniteLossError naming the first bad one. checked_at: the step about
        to train (None: only the step just checked before its optimizer step is pending)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = torch.stack([v.float() for _, _, v in pending]).tolist()
        for (rec, names, _), values in zip(pending, rows):
            rec["loss"], rec["losses"] = values[0], dict(zip(names, values[1:]))
            entry = rec.get("entry")
            if entry is not None:
                entry["loss"], entry["losses"] = rec["loss"], rec["losses"]
            _raise_if_non_finite(values, names, rec["step"], rec["stream"], self.optimizer, checked_at)

    # checkpoint -------------------------------------------------------------------------------
    def save(self) -> Path:
        from accelerate.utils import gather_object

        acc = self.accelerator
        samplers = gather_object([{s: f.state_dict() for s, f in self.feeds.items()}])
        rngs = gather_object([S.rng_state()])
        sharded = E.sharded(self.engine)
        # ZeRO-3 / FSDP: every process takes part in gathering the full weights and in writing its shards
        weights = S.full_state_dict(acc, self.model) if sharded else None
        tmp = C.begin_checkpoint(self.run_dir, self.step) if acc.is_main_process else None
        tmp = S.broadcast_path(tmp, acc.num_processes)
        if sharded:
            acc.save_state(str(tmp / S.ENGINE_DIR))  # weights and optimizer shards, for --resume
        path = None
        if acc.is_main_process:
            tail = (self.history_tail + self.history)[-HISTORY_TAIL:]
            state = {"step": self.step, "world_size": acc.num_processes, "seed": self.cfg["seed"],
                     "engine": self.engine, "samplers": samplers, "history_tail": tail}
            optim_state = None if sharded else self.optimizer.state_dict()
            norm = self.normalizer.to_dict()

            def write(d: Path):
                if sharded:
                    S.save_full_state_dict(weights, self.cg.model, d / "model.safetensors")
                else:
                    torch.save(optim_state, d / "optimizer.pt")
                    save_adapters(self.cg.model, d)  # LoRA adapters alone too (model.safetensors has them)
                C.write_json(d / "trainer_state.json", plain_data(state, for_json=True))
                torch.save(rngs, d / "rng.pt")
                # the inference half (weights, spec, pipelines, assets), through the runtime's run format
                C.write_policy_files(d, self.spec, self.preprocess, self.postprocess, plain_data(norm, for_json=True),
                                     self._asset_hashes, model=None if sharded else self.cg.model,
                                     base_weights=self.cfg["base_weights"])

            path = C.write_checkpoint(self.run_dir, self.step, write, keep_last=self.cfg["keep_last"], tmp=tmp)
        acc.wait_for_everyone()
        return path



# setup, in the order Trainer.__init__ runs it -------------------------------------------------
def stream_ratios(cg, trainer: dict) -> dict:
    declared = trainer.get("streams") or {}
    unknown = sorted(set(declared) - set(cg.streams))
    if unknown:
        raise ValueError(f"trainer.streams names {unknown}, but the graph's loss streams are {cg.streams}")
    return {s: int((declared.get(s) or {}).get("ratio", 1)) for s in cg.streams}


def start_accelerator(cg, trainer: dict, run_dir: Path):
    """The engine the launcher asks for (configs/accelerate/*.yaml, never the spec), checked against
    the graph, and the Accelerator for it. Returns (engine, accelerator)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = mixed_precision(trainer["precision"])
    compat.allow_precision_change(precision)
    engine = E.requested_engine()
    E.check_available(engine)
    E.check_shardable(engine, cg)
    acc = Accelerator(
        cpu=compat.accelerator_cpu_flag(engine),
        mixed_precision=precision, gradient_accumulation_steps=E.launcher_grad_accum(),
        log_with="tensorboard", project_dir=str(run_dir),  # TensorBoard events go to RUN_DIR/logs
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=needs_unused_search(cg))])
    compat.fix_process_counts(acc)
    compat.enable_fsdp_without_gpus(acc, engine)
    return engine, acc


def mixed_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16"}[precision]


def needs_unused_search(cg) -> bool:
    """DDP must look for unused parameters when some step leaves a trainable block out."""
    trainable = {bid for bid, m in cg.model.items() if any(p.requires_grad for p in m.parameters())}
    for s in cg.streams:
        used = {cg.block(b).owner for b in cg.train_block_ids(s)}
        if trainable - used:
            return True
    return False


def batch_layout(trainer: dict, streams, engine: str, acc) -> E.Layout:
    """Each stream's global batch (trainer.batch_size, or trainer.streams.S.batch_size) split over
    the processes and the launcher's gradient-accumulation steps."""
    streams_cfg = trainer.get("streams") or {}
    batches = {s: streams_cfg.get(s, {}).get("batch_size") or trainer["batch_size"] for s in streams}
    keys = {s: f"trainer.streams.{s}.batch_size" if streams_cfg.get(s, {}).get("batch_size") else "trainer.batch_size"
            for s in batches}
    return E.derive_layout(batches, keys, engine, acc.num_processes, E.launcher_grad_accum(), E.machine_count())


def default_normalizer(bundle, trainer: dict):
    return dataio.normalizer_class()(bundle.stats, dict(trainer.get("normalization") or {}))


def stream_feeds(cg, bundle, trainer: dict, layout, acc, preprocess, collate, encode_in_workers: bool):
    """Per stream: its endless batches (this process's shard, per-device batch size), the train
    graph's inputs (the preprocess pipeline runs in the workers). Returns (feeds, inputs)."""
    collate = collate or dataio.collate_fn()
    feeds, inputs = {}, {}
    for s in layout.per_device:
        if s not in bundle.streams:
            raise KeyError(f"the graph trains stream '{s}' but the data provides only {sorted(bundle.streams)}")
        bs = layout.per_device[s]  # trainer batch sizes are global: split over processes and accumulation
        sampler = bundle.sampler(s, seed=trainer["seed"], rank=acc.process_index, world_size=acc.num_processes)
        feed_collate = dataio.WorkerCollate(collate, preprocess) if encode_in_workers else collate
        feeds[s] = StreamBatches(bundle.streams[s], sampler, bs, feed_collate, trainer["num_workers"])
        inputs[s] = dataio.graph_inputs(cg.train[s])
    return feeds, inputs


def block_optimizer(cg, trainer: dict) -> torch.optim.AdamW:
    """AdamW with each block's param groups (its train.lr / weight_decay; frozen blocks left out)."""
    block_train = {bid: cg.block(bid).train for bid in cg.model}
    return build_optimizer(block_param_groups(cg.model, block_train, trainer), trainer)


def checkpoint_to_resume(run_dir: Path, resume, main: bool) -> Path | None:
    """The checkpoint --resume continues (resume: True for the run's latest, or a path), or None for
    a new run, which must not overwrite a run's checkpoints."""
    if main:
        C.clean_temporaries(C.checkpoints_dir(run_dir))  # leftovers of a crashed save
    if not resume:
        latest = C.latest_checkpoint(run_dir)
        if latest is not None:
            raise ValueError(f"{run_dir} already holds checkpoints ({latest.name}); "
                             "pass --resume to continue that run or choose a new run directory (-o)")
        return None
    ckpt = C.latest_checkpoint(run_dir) if resume is True else C.resolve_checkpoint(resume)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {C.checkpoints_dir(run_dir)}")
    return ckpt


def load_resume_state(ckpt: Path, cg, optimizer, feeds: dict, engine: str, acc):
    """Load a checkpoint into the blocks, the optimizer (DDP; sharded engines load theirs after
    prepare) and the data feeds. Returns (step, history tail, this rank's RNG state).

    The learning rate needs nothing: it is a function of the step, and every group's peak is in the
    optimizer state. Checkpoints written before that also hold a scheduler.pt, which is not read."""
    from safetensors.torch import load_model

    state = C.read_json(ckpt / "trainer_state.json")
    saved_engine = state.get("engine", "ddp")
    if saved_engine != engine:
        raise ValueError(f"checkpoint {ckpt} was trained under {saved_engine}, this run is {engine}: "
                         "resume with the same accelerate config (its optimizer state is laid out per engine)")
    missing, unexpected = load_model(cg.model, str(ckpt / "model.safetensors"), strict=False)
    missing = sorted(set(missing) - C.weights_left_to_base_files(ckpt, cg.model))  # trainer.base_weights: reference
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt} does not fit the graph: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    try:
        if not E.sharded(engine):  # sharded engines load theirs after prepare (S.load_engine_state)
            optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    except ValueError as e:
        raise ValueError(f"checkpoint {ckpt}: the optimizer state does not fit this spec's trainable blocks "
                         f"(was a block frozen or unfrozen since?): {e}") from None
    rank, world = acc.process_index, acc.num_processes
    if state.get("world_size", 1) != world:
        raise ValueError(f"checkpoint {ckpt} was written by {state.get('world_size')} processes, this run has "
                         f"{world}: the data order cannot be continued exactly")
    for s, feed in feeds.items():
        if s in state["samplers"][rank]:
            feed.load_state_dict(state["samplers"][rank][s])
    rng = torch.load(ckpt / "rng.pt", map_location="cpu", weights_only=True)[rank]
    return int(state["step"]), state.get("history_tail", []), rng


def prepare(acc, module, optimizer, layout, trainer: dict):
    """Hand the model and optimizer to Accelerate (placement, DDP / DeepSpeed / FSDP wrapping).
    Under DeepSpeed its config's "auto" values are filled first from the trainer section and the
    layout: Accelerate cannot infer them without a prepared DataLoader."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is not None:
        E.fill_deepspeed_config(plugin.deepspeed_config, layout, float(trainer["grad_clip"]))
    return acc.prepare(module, optimizer)


def seed_processes(seed: int, acc, rng: dict | None) -> None:
    """The RNG the steps draw from (dropout, noise): seed + rank for a new run (different per rank),
    or the state saved with the checkpoint, so a resumed run continues the same random stream."""
    from accelerate.utils import set_seed

    if rng is None:
        set_seed(seed + acc.process_index)
    else:
        S.set_rng_state(rng)


def _raise_if_non_finite(values, names, step, stream, optimizer, checked_at=None) -> None:
    for name, v in [*zip(names, values[1:]), ("total", values[0])]:  # name the term, not just the sum
        if not math.isfinite(v):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(step, stream, name, v, checked_at)


def _scalars(window, rate) -> dict:
    """TensorBoard scalars of the steps since the last log: each loss term and each stream's total
    (means), the lr each param group trained the last step with, samples/s."""
    by_name, by_stream = {}, {}
    for r in window:
        by_stream.setdefault(r["stream"], []).append(r["loss"])
        for n, v in r["losses"].items():
            by_name.setdefault(n, []).append(v)
    scalars = {f"loss/{n}": sum(vs) / len(vs) for n, vs in by_name.items()}
    scalars.update({f"loss_total/{s}": sum(vs) / len(vs) for s, vs in by_stream.items()})
    scalars.update({f"lr/{name}": lr for name, lr in window[-1]["lrs"].items()})
    scalars["throughput/samples_per_s"] = rate
    return scalars


def _progress(total, initial, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)
