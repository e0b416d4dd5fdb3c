"""The smoke check behind `graphvla check SPEC`: build the graph for real on CPU, make synthetic inputs from the declared
ports, run one training step per stream (forward, backward, one optimizer step) and one predict,
and print every loss and every output shape. Exit code 1 with a message naming the stream/block
on any failure (exception, non-finite loss, no gradient, output shape not as declared)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..compiler.compile import compile_graph
from ..spec.loader import load_spec

SENTENCES = ["pick up the red cube", "open the top drawer and push it", "press the green button",
             "put the bowl on the plate", "reach the goal position"]


class CheckFailed(RuntimeError):
    """The graph builds but does not train or predict; the message says where."""


def synthetic_batch(spec, batch: int = 2, seed: int = 0) -> dict:
    """A batch for every declared input: images in [0, 1], texts, states/actions ~ N(0, 1),
    masks all valid, tokens within the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, decl in spec.inputs.items():
        kind = decl["kind"]
        if kind == "image":
            h, w = decl["size"]
            out[name] = torch.rand(batch, decl.get("views", 1), decl.get("channels", 3), h, w, generator=g)
        elif kind == "text":
            out[name] = [SENTENCES[(i + len(name)) % len(SENTENCES)] for i in range(batch)]
        elif kind == "state":
            hist = decl.get("history", 1)
            shape = (batch, decl["dim"]) if hist == 1 else (batch, hist, decl["dim"])
            out[name] = torch.randn(*shape, generator=g)
        elif kind == "action":
            out[name] = torch.randn(batch, decl["horizon"], decl["dim"], generator=g).clamp(-2, 2) / 2
        elif kind == "mask":
            out[name] = torch.ones(batch, *decl["shape"], dtype=torch.bool)
        elif kind == "tokens":
            out[name] = torch.randint(0, decl.get("vocab", 2), (batch, *decl["shape"]), generator=g)
    return out


def graph_arguments(gm) -> list[str]:
    return [n.target for n in gm.graph.nodes if n.op == "placeholder"]


@dataclass
class CheckReport:
    name: str
    params: int = 0
    losses: dict = field(default_factory=dict)  # stream -> {loss name: float}
    totals: dict = field(default_factory=dict)  # stream -> float
    outputs: dict = field(default_factory=dict)  # output -> shape
    seconds: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)  # stream -> parameter tensors the optimizer step changed

    def format(self) -> str:
        lines = [f"graph {self.name}: {self.params:,} parameters, built on cpu"]
        for stream, losses in self.losses.items():
            lines.append(f"train step, stream '{stream}': total {self.totals[stream]:.4f}, "
                         f"{self.changed.get(stream, 0)} weight tensors updated  ({self.seconds[stream]:.2f}s)")
            lines += [f"  loss {name:18s} {value:.4f}" for name, value in losses.items()]
        lines.append(f"predict  ({self.seconds['predict']:.2f}s)")
        lines += [f"  output {name:16s} {list(shape) if shape is not None else '-'}" for name, shape in self.outputs.items()]
        lines.append("ok")
        return "\n".join(lines)


class _BlockTracker:
    """Remembers which block is running, to name it when a step fails."""

    def __init__(self, model):
        self.current, self.handles = None, []
        for bid, module in model.items():
            self.handles.append(module.register_forward_pre_hook(lambda m, a, bid=bid: setattr(self, "current", bid)))
            self.handles.append(module.register_forward_hook(lambda m, a, o: setattr(self, "current", None)))

    def where(self, cg) -> str:
        if self.current is None:
            return ""
        return f" in block '{self.current}' ({cg.block(self.current).type_name})"

    def close(self):
        for h in self.handles:
            h.remove()


def run_check(spec, overrides=(), batch: int = 2, seed: int = 0, lr: float = 1e-4) -> CheckReport:
    """Build SPEC on CPU, one training step per stream and one predict; raise CheckFailed."""
    torch.manual_seed(seed)
    s = load_spec(spec, overrides) if not hasattr(spec, "inputs") else spec
    cg = compile_graph(s, device="cpu")
    report = CheckReport(s.name, params=sum(p.numel() for p in cg.model.parameters()))
    data = synthetic_batch(s, batch, seed)
    trainable = [p for p in cg.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr) if trainable else None
    tracker = _BlockTracker(cg.model)
    try:
        cg.model.train()
        for stream, gm in cg.train.items():
            # the blocks' processor steps make what the graph takes from the (already normalized) batch
            fed = cg.feed(dict(data), stream)
            args = {k: fed.get(k) for k in graph_arguments(gm)}
            start = time.perf_counter()
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            try:
                out = gm(**args)
                total = out["loss"]
                if total is None:
                    raise CheckFailed(f"stream '{stream}' has no loss")
                total.backward()
            except CheckFailed:
                raise
            except Exception as e:
                raise CheckFailed(f"training step of stream '{stream}' failed{tracker.where(cg)}: {type(e).__name__}: {e}") from e
            losses = {k: float(v.detach()) for k, v in out["losses"].items()}
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise CheckFailed(f"stream '{stream}': loss {', '.join(bad)} is not finite ({losses})")
            grads = [p for p in trainable if p.grad is not None]
            if trainable and not grads:
                raise CheckFailed(f"stream '{stream}': the loss reaches no trainable parameter (no gradients)")
            if any(not torch.isfinite(p.grad).all() for p in grads):
                raise CheckFailed(f"stream '{stream}': non-finite gradients")
            if optimizer is not None:
                before = [p.detach().clone() for p in grads]
                optimizer.step()
                report.changed[stream] = sum(not torch.equal(b, p) for b, p in zip(before, grads))
                if not report.changed[stream]:
                    raise CheckFailed(f"stream '{stream}': the optimizer step changed no weight")
            report.losses[stream], report.totals[stream] = losses, float(total.detach())
            report.seconds[stream] = time.perf_counter() - start

        cg.model.eval()  # cg.infer keeps no every-k cache (the Policy does): each call runs every block
        names = graph_arguments(cg.infer)
        fed = cg.feed({k: v for k, v in data.items() if k in cg.spec.inputs and not cg.spec.inputs[k].get("train_only")})
        args = {k: fed[k] for k in names if k in fed}
        if "noise" in names:  # the sampling head's starting noise, as Policy draws it for a seeded session
            head = cg.model[next(cg.block(b).owner for b in cg.infer_block_ids() if "noise" in cg.block(b).predict_kwargs)]
            args["noise"] = head.draw_noise(batch, torch.Generator().manual_seed(seed), torch.device("cpu"))
        start = time.perf_counter()
        try:
            with torch.no_grad():
                outputs = cg.infer(**args)
        except Exception as e:
            raise CheckFailed(f"predict failed{tracker.where(cg)}: {type(e).__name__}: {e}") from e
        report.seconds["predict"] = time.perf_counter() - start
    finally:
        tracker.close()
    for name, value in outputs.items():
        report.outputs[name] = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        _check_output(cg, name, value, batch)
    return report


def _check_output(cg, name, value, batch):
    if not isinstance(value, torch.Tensor):
        return
    if value.shape[0] != batch:
        raise CheckFailed(f"output '{name}' has batch {value.shape[0]}, expected {batch}")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise CheckFailed(f"output '{name}' has non-finite values")
    ref = cg.spec.outputs[name]
    src, port = ref.split(".", 1)
    declared = cg.shapes.get((src, port)) if src != "inputs" else None
    if declared is None:
        return
    for axis, (want, got) in enumerate(zip(declared[1:], value.shape[1:]), start=1):
        if isinstance(want, int) and want != got:
            raise CheckFailed(f"output '{name}' ({ref}) has shape {list(value.shape)}, the compiled graph says "
                              f"{list(declared)} (axis {axis})")


# --- graphvla check RUN --parity ------------------------------------------------------------------
# The same frames through the three paths a trained graph meets: (a) the trainer's collate (its
# DataLoader feed with normalization and the blocks' processor work) and its train graph, (b)
# Policy.infer_batch, (c) an exported graph (runners/exported.py). What each inference block receives
# is recorded in (a) and (b) (the keyword arguments of its module's outermost forward/predict call)
# and compared port by port; the actions of (b) and (c) are compared with the same noise (a session
# seeded seed + i for frame i in both). Everything runs in eval mode, so dropout and training-time
# augmentation do not count as differences.

SAMPLING_ARGS = ("noise", "num_steps", "rtc")  # predict's run-time arguments, not ports


@dataclass
class ParityReport:
    run: str
    data: str
    stream: str
    frames: list  # dataset indices of the frames compared
    inputs: dict = field(default_factory=dict)  # 'BLOCK.PORT' -> (max |diff|, frame of the max or None)
    actions: dict = field(default_factory=dict)  # output -> (max |diff|, frame)
    export: str | None = None
    atol: float = 1e-5
    mismatches: list = field(default_factory=list)  # messages naming the port and the frame
    unmatched: list = field(default_factory=list)  # inference blocks training does not run

    def format(self) -> str:
        lines = [f"parity of {self.run} on {self.data}: {len(self.frames)} frames of stream '{self.stream}' "
                 f"(max |diff| per port, tolerance {self.atol:g})",
                 "block inputs, training collate vs Policy:"]
        lines += [f"  {port:32s} {_fmt(d)}" for port, (d, _) in self.inputs.items()]
        if self.unmatched:
            lines.append(f"  (not compared: {', '.join(self.unmatched)} run only at inference)")
        if self.export is not None:
            lines.append(f"actions, Policy vs export {self.export}:")
            lines += [f"  {name:32s} {_fmt(d)}" for name, (d, _) in self.actions.items()]
        lines += [f"mismatch: {m}" for m in self.mismatches]
        lines.append("ok" if not self.mismatches else f"{len(self.mismatches)} mismatch(es)")
        return "\n".join(lines)


def _fmt(d: float) -> str:
    return "0" if d == 0 else f"{d:.3g}"


class _CallRecorder:
    """Records, for each module of `owners`, the keyword arguments of each outermost call of
    forward (a pre-hook) or predict (an instance attribute wrapping it), in call order."""

    def __init__(self, model, owners):
        self.calls = {o: [] for o in owners}
        self._depth = {o: 0 for o in owners}
        self._undo = []
        for owner in owners:
            module = model[owner]
            self._undo.append(module.register_forward_pre_hook(
                lambda m, args, kwargs, o=owner: self._enter(o, kwargs), with_kwargs=True).remove)
            self._undo.append(module.register_forward_hook(lambda m, a, out, o=owner: self._leave(o)).remove)
            predict = module.predict

            def wrapped(*args, _o=owner, _predict=predict, **kwargs):
                self._enter(_o, kwargs)
                try:
                    return _predict(*args, **kwargs)
                finally:
                    self._leave(_o)

            module.predict = wrapped
            self._undo.append(lambda m=module: m.__dict__.pop("predict", None))

    def _enter(self, owner, kwargs):
        if self._depth[owner] == 0:
            self.calls[owner].append({k: _snapshot(v) for k, v in kwargs.items()})
        self._depth[owner] += 1

    def _leave(self, owner):
        self._depth[owner] -= 1

    def by_block(self, cg, block_ids) -> dict:
        """block id -> its recorded kwargs (the k-th call of a module is its k-th block in order).
        A block a session cache runs row by row (`infer: {every: k}`) is called once per row: its
        rows' calls are joined back into one batch."""
        blocks = {}
        for bid in block_ids:
            owner = cg.block(bid).owner
            if owner in self.calls:
                blocks.setdefault(owner, []).append(bid)
        out = {}
        for owner, bids in blocks.items():
            calls = self.calls[owner]
            per = len(calls) // len(bids) if len(calls) % len(bids) == 0 and calls else 1
            for k, bid in enumerate(bids):
                rows = calls[k * per:(k + 1) * per]
                if rows:
                    out[bid] = rows[0] if per == 1 else {key: _join([r.get(key) for r in rows]) for key in rows[0]}
        return out

    def close(self):
        for undo in self._undo:
            undo()
        self._undo = []


def _snapshot(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return value


def _join(values: list):
    """Per-row values (batches of one) -> one batch: tensors concatenated (zero-padded where the
    rows' lengths differ, as a batch pads them), lists chained, dicts by key, the rest the first."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0 and all(isinstance(v, torch.Tensor) for v in values):
        shape = [max(v.shape[d] for v in values) for d in range(1, first.dim())]
        padded = []
        for v in values:
            out = v.new_zeros((v.shape[0], *shape))
            out[(slice(None), *(slice(0, n) for n in v.shape[1:]))] = v
            padded.append(out)
        return torch.cat(padded)
    if isinstance(first, list):
        return [x for v in values for x in v]
    if isinstance(first, dict):
        return {k: _join([v[k] for v in values]) for k in first}
    return first


def _row_diffs(a, b, rows: int, where: str) -> list:
    """(name, per-frame max |a - b| list) for every tensor or text leaf of two recorded values;
    float('inf') marks a frame whose values differ in kind, shape or text."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append((f"{where}.{k}", [float("inf")] * rows))
            else:
                out += _row_diffs(a[k], b[k], rows, f"{where}.{k}")
        return out
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype.is_floating_point != b.dtype.is_floating_point:
            return [(where, [float("inf")] * rows)]
        if a.dim() == 0 or a.shape[0] != rows:
            d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
            return [(where, [d] * rows)]
        d = (a.double() - b.double()).abs().reshape(rows, -1)
        return [(where, d.max(dim=1).values.tolist() if d.shape[1] else [0.0] * rows)]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) == rows:
        return [(where, [0.0 if x == y else float("inf") for x, y in zip(a, b)])]
    same = type(a) is type(b) and (a is None or a == b)
    return [(where, [0.0 if same else float("inf")] * rows)]


def _recorded_data(run) -> str | None:
    """The --data a run was trained on (RUN/data.json, written by policy/run_data.py), if noted."""
    import json
    from pathlib import Path

    for folder in (Path(run), *Path(run).parents[:2]):  # a run, or one of its checkpoints
        path = folder / "data.json"
        if path.is_file():
            return json.loads(path.read_text()).get("data")
    return None


def _action_stream(cg) -> str:
    """The training stream whose graph runs the block the action output comes from."""
    name = "actions" if "actions" in cg.spec.outputs else next(iter(cg.spec.outputs))
    source = cg.output_source(name).node
    for stream in cg.streams:
        if source in cg.train_block_ids(stream):
            return stream
    return cg.streams[0]


class _Sequential:
    """A sampler of the frames to compare, in order, endlessly (what the trainer's feed draws)."""

    def __init__(self, indices):
        self.indices = list(indices)

    def __iter__(self):
        while True:
            yield from self.indices

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class _FixedFrames:
    """The run's DataBundle whose samplers yield the chosen frames in order (the other streams of
    a co-training graph are set up by the trainer but never drawn from)."""

    def __init__(self, bundle, indices):
        self.streams, self.stats, self.warnings = bundle.streams, bundle.stats, bundle.warnings
        self._indices = indices

    def sampler(self, stream, **_):
        return _Sequential([i for i in self._indices if i < len(self.streams[stream])] or [0])


def _training_inputs(ckpt, policy, bundle, stream, indices, infer_ids) -> dict:
    """(a): the frames through the trainer's own feed (collate, normalization, the blocks' data work
    where the trainer does it) and its train graph, with the checkpoint's weights, in eval mode.
    Returns block id -> recorded kwargs."""
    import copy
    import tempfile

    from ..policy.assets import localized_values
    from ..spec.loader import apply_overrides
    from .train.loop import Trainer, compile_for_training

    n = len(indices)
    spec = copy.deepcopy(policy.cg.spec)  # the trained spec, its files where the checkpoint keeps them
    for (bid, key), path in localized_values(ckpt).items():
        spec.data["blocks"][bid]["with"][key] = path
    overrides = [f"trainer.batch_size={n}", "trainer.num_workers=0"]
    if ((spec.section("trainer").get("streams") or {}).get(stream) or {}).get("batch_size"):
        overrides.append(f"trainer.streams.{stream}.batch_size={n}")
    apply_overrides(spec, overrides)
    cg = compile_for_training(spec)
    cg.model.load_state_dict(policy.cg.model.state_dict())
    with tempfile.TemporaryDirectory(prefix="graphvla-parity-") as run_dir:
        trainer = Trainer(cg, _FixedFrames(bundle, indices), run_dir, progress=False)
        model = cg.model
        trainer.modes.apply = model.eval  # compare data paths, not dropout or augmentation
        trainer.schedule.stream_at = lambda step: stream
        recorder = _CallRecorder(model, sorted({cg.block(b).owner for b in infer_ids}))
        try:
            trainer.train_step(check=False)
        finally:
            recorder.close()
            for feed in trainer.feeds.values():
                feed.close()
    return recorder.by_block(cg, cg.train_block_ids(stream))


def _observations(policy, dataset, indices) -> list:
    """The frames as observations: the values of the policy's input ports, as the dataset has them."""
    return [{port: sample[port] for port in policy.inputs if port in sample}
            for sample in (dataset[i] for i in indices)]


def run_parity(run, data=None, export=None, frames: int = 4, seed: int = 0, atol: float = 1e-5) -> ParityReport:
    """`graphvla check RUN --parity` (see above). Returns the report; its `mismatches` name the port
    and the frame of every difference above `atol`."""
    from ..policy.checkpoint import resolve_checkpoint
    from ..policy.loading import load_policy
    from .train import dataio

    ckpt = resolve_checkpoint(run)
    data = data or _recorded_data(run)
    if data is None:
        raise CheckFailed(f"{run}: no data.json says what it was trained on; pass --data DATA")
    policy = load_policy(ckpt)
    cg = policy.cg
    bundle = dataio.load_bundle(data, cg.spec, split="train")
    stream = _action_stream(cg)
    if stream not in bundle.streams:
        raise CheckFailed(f"--data {data}: has no stream '{stream}' (streams: {', '.join(bundle.streams)})")
    dataset = bundle.streams[stream]
    indices = list(range(min(int(frames), len(dataset))))
    if not indices:
        raise CheckFailed(f"--data {data}: stream '{stream}' has no frames")
    report = ParityReport(str(run), str(data), stream, indices, export=None if export is None else str(export),
                          atol=float(atol))
    infer_ids = cg.infer_block_ids()

    # (a) the trainer's path and (b) the policy's, recorded block by block
    try:
        trained = _training_inputs(ckpt, policy, bundle, stream, indices, infer_ids)
    except Exception as e:  # reported as the path it happened in
        raise CheckFailed(f"the training collate path failed on frames {indices}: {type(e).__name__}: {e}") from e
    observations = _observations(policy, dataset, indices)
    recorder = _CallRecorder(cg.model, sorted({cg.block(b).owner for b in infer_ids}))
    try:
        served = policy.infer_batch(observations, sessions=[policy.new_session(seed + i) for i in indices])
    finally:
        recorder.close()
    inferred = recorder.by_block(cg, infer_ids)
    for bid in infer_ids:
        if bid in inferred and bid not in trained:
            report.unmatched.append(f"{bid} ({cg.block(bid).type_name})")
        if bid not in inferred or bid not in trained:
            continue
        a, b = trained[bid], inferred[bid]
        for port in [p for p in b if p not in SAMPLING_ARGS]:
            if port not in a:
                report.mismatches.append(f"block input '{bid}.{port}': the policy passes it, training does not")
                continue
            for name, diffs in _row_diffs(a[port], b[port], len(indices), f"{bid}.{port}"):
                _note(report, report.inputs, name, diffs, indices, "block input", "training collate", "Policy")

    # (c) the export, with the policy's noise (the same session seeds)
    if export is not None:
        from .exported import load_exported

        exported = load_exported(export)
        got = exported.infer_batch(observations, sessions=[exported.new_session(seed + i) for i in indices])
        for name in policy.outputs:
            if name not in got[0]:
                report.mismatches.append(f"output '{name}': the export does not return it")
                continue
            diffs = [float(np.abs(np.asarray(s[name], np.float64) - np.asarray(g[name], np.float64)).max())
                     if np.shape(s[name]) == np.shape(g[name]) else float("inf") for s, g in zip(served, got)]
            _note(report, report.actions, name, diffs, indices, "output", "Policy", "export")
    return report


def _note(report, table, name, diffs, indices, what, left, right):
    worst = max(range(len(diffs)), key=lambda i: diffs[i])
    table[name] = (diffs[worst], indices[worst])
    bad = [i for i, d in enumerate(diffs) if not d <= report.atol]  # NaN counts as a mismatch
    if bad:
        i = bad[0]
        report.mismatches.append(f"{what} '{name}' differs at frame {indices[i]}: max |{left} - {right}| = "
                                 f"{diffs[i]:.3g} > {report.atol:g}")
