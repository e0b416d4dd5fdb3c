"""The training loop. It knows nothing about heads or backbones: each step it picks a stream,
draws that stream's batch, runs `cg.train[stream](**batch)` and steps AdamW on the total loss.

Accelerate places the model, wraps it for DDP / DeepSpeed and syncs gradients; on one CPU
process it is a thin pass-through."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...blocks.lora import save_adapters
from ...compiler import dag as D
from ...policy.caches import batch_size
from ...policy.plain_data import plain_data
from ...policy import checkpoint as C
from . import sharded as S
from . import dataio
from . import engine as E
from ...policy.assets import write_assets
from .optim import block_param_groups, build_optimizer, build_scheduler
from .precision import TrainModes, keep_fp32_masters
from .streams import StreamBatches, StreamSchedule

HISTORY_TAIL = 1000  # loss records kept in trainer_state.json


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

    def __init__(self, cg, encoders: dict | None = None):
        super().__init__()
        self.blocks = cg.model
        self._graphs = dict(cg.train)
        self._encoders = dict(encoders or {})  # stream -> dataio.worker_encoders

    def forward(self, stream: str, batch: dict, encodings: dict | None = None) -> dict:
        if encodings:
            # handed over here, after DDP / FSDP moved the inputs (which rebuilds lists), so that each
            # encoding is tied to the very object its block receives
            dataio.hand_over_encodings(batch, encodings, self.blocks, self._encoders[stream])
        return self._graphs[stream](**batch)


def stream_ratios(cg, trainer: dict) -> dict:
    declared = trainer.get("streams") or {}
    unknown = sorted(set(declared) - set(cg.streams))
    if unknown:
        raise ValueError(f"trainer.streams names {unknown}, but the graph's loss streams are {cg.streams}")
    return {s: int((declared.get(s) or {}).get("ratio", 1)) for s in cg.streams}


def mixed_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16"}[precision]


def _allow_precision_change(precision: str) -> None:
    """Accelerate keeps one process-wide state; a second trainer in the same process (tests,
    notebooks) with another precision needs it reset. The process group is left alone."""
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def needs_unused_search(cg) -> bool:
    """DDP must look for unused parameters when some step leaves a trainable block out."""
    trainable = {bid for bid, m in cg.model.items() if any(p.requires_grad for p in m.parameters())}
    for s in cg.streams:
        used = {cg.dag.nodes[b]["owner"] for b in D.train_blocks(cg.dag, s)}
        if trainable - used:
            return True
    return False


class Trainer:
    """One training session: build everything, optionally resume, run until max_steps (or
    stop_after steps of this session), checkpointing on the way."""

    def __init__(self, spec, bundle, run_dir, *, resume=False, stop_after=None, normalizer=None, progress=True,
                 collate=None, encode_in_workers=True):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        from ...compiler.compile import compile_graph

        self.spec, self.run_dir = spec, Path(run_dir)
        self.cfg = spec.section("trainer")
        self.stop_after, self.progress = stop_after, progress
        set_seed(self.cfg["seed"])  # identical initial weights on every rank
        self.cg = compile_graph(spec, device="cpu")
        # fp32 masters for blocks loaded in bf16 (before the optimizer and a resume see them)
        self.low_precision = keep_fp32_masters(self.cg.model)
        self.modes = TrainModes(self.cg.model)
        self.schedule = StreamSchedule(stream_ratios(self.cg, self.cfg))
        precision = mixed_precision(self.cfg["precision"])
        _allow_precision_change(precision)
        self.engine = E.requested_engine()  # chosen by the launcher's config (configs/accelerate/*.yaml)
        E.check_available(self.engine)
        E.check_shardable(self.engine, self.cg)
        accum = E.launcher_grad_accum()
        self.accelerator = Accelerator(
            cpu=E.accelerator_cpu_flag(self.engine),  # DDP without GPUs: a gloo group (MULTI_CPU)
            mixed_precision=precision, gradient_accumulation_steps=accum,
            log_with="tensorboard", project_dir=str(self.run_dir),  # TensorBoard events go to RUN_DIR/logs
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=needs_unused_search(self.cg))])
        acc = self.accelerator
        E.fix_process_counts(acc)
        E.enable_fsdp_without_gpus(acc, self.engine)
        streams_cfg = self.cfg.get("streams") or {}
        batches = {s: streams_cfg.get(s, {}).get("batch_size") or self.cfg["batch_size"] for s in self.schedule.ratios}
        keys = {s: f"trainer.streams.{s}.batch_size" if streams_cfg.get(s, {}).get("batch_size") else "trainer.batch_size"
                for s in batches}
        self.layout = E.derive_layout(batches, keys, self.engine, acc.num_processes, accum, E.machine_count())

        if normalizer is None:
            normalizer = dataio.normalizer_class()(bundle.stats, dict(self.cfg.get("normalization") or {}))
        normalizer.check_compatible(spec)
        self.normalizer = normalizer

        collate = collate or dataio.collate_fn()
        # normalization and the blocks' encoders run where batches are collated (DataLoader workers
        # with num_workers > 0), so the step receives tensors; encode_in_workers=False keeps them in the step
        self.normalize_in_step = not encode_in_workers
        self.feeds, self.inputs, self.encoders = {}, {}, {}
        for s in self.schedule.ratios:
            if s not in bundle.streams:
                raise KeyError(f"the graph trains stream '{s}' but the data provides only {sorted(bundle.streams)}")
            bs = self.layout.per_device[s]  # trainer batch sizes are global: split over processes and accumulation
            sampler = bundle.sampler(s, seed=self.cfg["seed"], rank=acc.process_index, world_size=acc.num_processes)
            self.encoders[s] = dataio.worker_encoders(self.cg, s) if encode_in_workers else []
            feed_collate = collate if self.normalize_in_step else dataio.WorkerCollate(collate, normalizer, self.encoders[s])
            self.feeds[s] = StreamBatches(bundle.streams[s], sampler, bs, feed_collate, self.cfg["num_workers"])
            self.inputs[s] = dataio.graph_inputs(self.cg.train[s])

        self.module = GraphTrainModule(self.cg, self.encoders)
        block_train = {bid: self.cg.dag.nodes[bid]["train"] for bid in self.cg.model}
        self.optimizer = build_optimizer(block_param_groups(self.cg.model, block_train, self.cfg), self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg)
        self.step, self.history = 0, []
        self._asset_hashes = {}  # sha256 of referenced base weights, computed once per run
        self._pending = []  # (record, loss names, device tensor) of steps whose losses are not read yet
        self.resumed_from = None
        if acc.is_main_process:
            C.clean_temporaries(C.checkpoints_dir(self.run_dir))  # leftovers of a crashed save
        if resume:
            self._load(resume)
        elif C.latest_checkpoint(self.run_dir) is not None:
            raise ValueError(f"{self.run_dir} already holds checkpoints ({C.latest_checkpoint(self.run_dir).name}); "
                             "pass --resume to continue that run or choose a new run directory (-o)")
        self._fill_deepspeed_config()
        # The scheduler is not handed to Accelerate: it would step it once per process.
        self.model, self.optimizer = acc.prepare(self.module, self.optimizer)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if self.resumed_from is not None and E.sharded(self.engine):
            S.load_engine_state(acc, self.resumed_from)  # the shards of weights and optimizer state
        if self.resumed_from is None:
            set_seed(self.cfg["seed"] + acc.process_index)  # different dropout/noise per rank
        else:
            S.set_rng_state(self._rng_to_restore)

    def _fill_deepspeed_config(self):
        """Under DeepSpeed (configs/accelerate/deepspeed_zero*.yaml), fill its "auto" values from the trainer
        section and the derived layout: Accelerate cannot infer them without a prepared DataLoader."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:
            E.fill_deepspeed_config(plugin.deepspeed_config, self.layout, float(self.cfg["grad_clip"]))

    # resume -----------------------------------------------------------------------------------
    def _load(self, resume):
        ckpt = C.latest_checkpoint(self.run_dir) if resume is True else C.resolve_checkpoint(resume)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {C.checkpoints_dir(self.run_dir)}")
        from safetensors.torch import load_model

        state = C.read_json(ckpt / "trainer_state.json")
        saved_engine = state.get("engine", "ddp")
        if saved_engine != self.engine:
            raise ValueError(f"checkpoint {ckpt} was trained under {saved_engine}, this run is {self.engine}: "
                             "resume with the same accelerate config (its optimizer state is laid out per engine)")
        missing, unexpected = load_model(self.cg.model, str(ckpt / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {ckpt} does not fit the graph: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        try:
            if not E.sharded(self.engine):  # sharded engines load theirs after prepare (S.load_engine_state)
                self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
        except ValueError as e:
            raise ValueError(f"checkpoint {ckpt}: the optimizer state does not fit this spec's trainable blocks "
                             f"(was a block frozen or unfrozen since?): {e}") from None
        sched = torch.load(ckpt / "scheduler.pt", map_location="cpu", weights_only=True)
        # the schedule's shape (warmup, max_steps, floor) comes from the current trainer section,
        # so `--resume --set trainer.max_steps=...` extends a run smoothly
        sched["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
        self.scheduler.load_state_dict(sched)
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(self.scheduler.last_epoch)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if state.get("world_size", 1) != world:
            raise ValueError(f"checkpoint {ckpt} was written by {state.get('world_size')} processes, this run has "
                             f"{world}: the data order cannot be continued exactly")
        for s, feed in self.feeds.items():
            if s in state["samplers"][rank]:
                feed.load_state_dict(state["samplers"][rank][s])
        self.step = int(state["step"])
        self.history_tail = state.get("history_tail", [])
        self._rng_to_restore = torch.load(ckpt / "rng.pt", map_location="cpu", weights_only=True)[rank]
        self.resumed_from = ckpt

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
            tail = (getattr(self, "history_tail", []) + self.history)[-HISTORY_TAIL:]
            state = {"step": self.step, "world_size": acc.num_processes, "seed": self.cfg["seed"],
                     "engine": self.engine, "samplers": samplers, "history_tail": tail}
            optim_state = None if sharded else self.optimizer.state_dict()
            sched_state = self.scheduler.state_dict()
            norm = self.normalizer.to_dict()

            def write(d: Path):
                from safetensors.torch import save_model

                if sharded:
                    S.save_full_state_dict(weights, self.cg.model, d / "model.safetensors")
                else:
                    save_model(self.cg.model, str(d / "model.safetensors"))
                    torch.save(optim_state, d / "optimizer.pt")
                    save_adapters(self.cg.model, d)  # LoRA adapters alone too (model.safetensors has them)
                torch.save(sched_state, d / "scheduler.pt")
                C.write_json(d / "trainer_state.json", plain_data(state, for_json=True))
                torch.save(rngs, d / "rng.pt")
                (d / "spec.yaml").write_text(self.spec.to_yaml())
                C.write_json(d / "graph.json", {"name": self.cg.name, "fingerprint": self.cg.fingerprint,
                                                "spec_file": str(Path(self.spec.file).resolve()) if self.spec.file else None})
                C.write_json(d / "normalization.json", plain_data(norm, for_json=True))
                write_assets(self.spec, d, self._asset_hashes)  # tokenizers, processors, configs: self-contained

            path = C.write_checkpoint(self.run_dir, self.step, write, keep_last=self.cfg["keep_last"], tmp=tmp)
        acc.wait_for_everyone()
        return path

    # loop -------------------------------------------------------------------------------------
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
        lrs = {g.get("name", "group"): g["lr"] for g in self.optimizer.param_groups}  # what this step trains with
        mean, samples = None, 0
        for _ in range(accum):  # micro-batches; Accelerate syncs gradients and steps on the last one only
            with acc.accumulate(self.model):
                batch = self.feeds[stream].next()
                encodings = dataio.take_encodings(batch, self.encoders[stream])
                if self.normalize_in_step:
                    batch = dataio.normalize(self.normalizer, batch)
                batch = dataio.fit_batch(batch, *self.inputs[stream], stream)
                batch = dataio.to_device(batch, acc.device)
                out = self.model(stream, batch, encodings)
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
        self.scheduler.step()
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

    def run(self) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        main = acc.is_main_process
        max_steps = cfg["max_steps"]
        end = max_steps if self.stop_after is None else min(max_steps, self.step + self.stop_after)
        acc.init_trackers("logs")  # the main process only
        bar = _progress(max_steps, self.step, enabled=main and self.progress)
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
            # not acc.end_training(): it would also destroy the process group, which outlives this run
            for tracker in acc.trackers:
                tracker.finish()
            acc.trackers.clear()  # a later run() starts its own
        return TrainResult(self.run_dir, self.step, self.history, last_ckpt, samples,
                           time.perf_counter() - start - saving)


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


def train(spec, bundle, run_dir, **kwargs) -> TrainResult:
    """Train `spec` (a Spec) on `bundle` (a graphvla.data DataBundle) into run_dir.
    kwargs: resume (True: the run's latest checkpoint, or a checkpoint path), stop_after
    (steps for this session), normalizer, progress, collate."""
    return Trainer(spec, bundle, run_dir, **kwargs).run()
