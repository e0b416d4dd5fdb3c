"""The smoke check behind `graphvla check SPEC`: build the graph for real on CPU, make synthetic inputs from the declared
ports, run one training step per stream (forward, backward, one optimizer step) and one predict,
and print every loss and every output shape. Exit code 1 with a message naming the stream/block
on any failure (exception, non-finite loss, no gradient, output shape not as declared)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

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
        return f" in block '{self.current}' ({cg.dag.nodes[self.current]['type']})"

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
            args = {k: data.get(k) for k in graph_arguments(gm)}
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
        args = {k: data[k] for k in names if k in data}
        if "generator" in names:
            args["generator"] = torch.Generator().manual_seed(seed)
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
