"""Build the blocks of a DAG and compute the shape of every edge on meta tensors.

Blocks are constructed in topological order on the meta device: each sees the kind and shape of
its wired inputs (PortInfo) and sizes itself from them. Two probes with different batch sizes
and instruction lengths tell which axes are the batch ('B') and which vary with the data ('*'),
so no weights are allocated and no GPU is needed. With device != 'meta' the blocks are then
built for real from the same PortInfos.
"""
from __future__ import annotations

import traceback

import torch

from ..blocks.base import BuildContext, ParamError, PortError, PortInfo
from ..blocks.lora import LoraSpecError, apply_lora
from ..errors import SpecError, SpecIssue, first_line
from . import dag as D

PROBE_BATCHES = (2, 3)
PROBE_TEXTS = (
    ["pick up the red cube", "open the top drawer"],
    ["push the green button down", "put the bowl on the plate then close it", "reach the goal"],
)


def probe_input(decl: dict, batch: int, texts: list, device="meta"):
    kind = decl["kind"]
    if kind == "text":
        return list(texts[:batch])
    if kind == "image":
        h, w = decl["size"]
        return torch.empty(batch, decl.get("views", 1), decl.get("channels", 3), h, w, device=device)
    if kind == "state":
        hist = decl.get("history", 1)
        shape = (batch, decl["dim"]) if hist == 1 else (batch, hist, decl["dim"])
        return torch.empty(shape, device=device)
    if kind == "action":
        return torch.empty(batch, decl["horizon"], decl["dim"], device=device)
    if kind == "mask":
        return torch.empty(batch, *decl["shape"], dtype=torch.bool, device=device)
    if kind == "tokens":
        return torch.empty(batch, *decl["shape"], dtype=torch.long, device=device)
    raise ValueError(f"unknown input kind {kind}")


def symbolic(shapes) -> tuple | None:
    """Merge probe shapes: an axis equal to the probe batch is 'B', one that scales with it
    'B*k', one that varies otherwise '*'."""
    if any(s is None for s in shapes):
        return None
    if len({len(s) for s in shapes}) != 1:
        return ("*",)
    out = []
    for axis in zip(*shapes):
        if len(set(axis)) == 1:
            out.append(int(axis[0]))
        elif all(a == b for a, b in zip(axis, PROBE_BATCHES)):
            out.append("B")
        elif all(a % b == 0 for a, b in zip(axis, PROBE_BATCHES)) and len({a // b for a, b in zip(axis, PROBE_BATCHES)}) == 1:
            out.append(f"B*{axis[0] // PROBE_BATCHES[0]}")
        else:
            out.append("*")
    return tuple(out)


def shape_of(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return None


def build(spec, g, device="meta", issues=None):
    """Returns (modules: owner id -> Block, shapes: (node, port) -> symbolic shape, infos)."""
    issues = issues if issues is not None else spec.issues()
    values = [{} for _ in PROBE_BATCHES]
    shapes, infos, modules = {}, {}, {}
    failed = set()  # nodes without probe values; blocks fed by them are skipped, not reported again
    for name, decl in spec.inputs.items():
        node = D.INPUT_PREFIX + name
        if node not in g:
            continue
        try:
            for i, (b, texts) in enumerate(zip(PROBE_BATCHES, PROBE_TEXTS)):
                values[i][(node, None)] = probe_input(decl, b, texts)
        except (RuntimeError, ValueError, TypeError, OverflowError) as e:
            issues.add(f"cannot make a tensor for this input: {first_line(e)}", ("inputs", name))
            failed.add(node)
            continue
        shapes[(node, None)] = symbolic([shape_of(v[(node, None)]) for v in values])

    for bid in D.build_order(g):
        data = g.nodes[bid]
        wired = D.in_edges(g, bid)
        if any(src in failed for _, src, _, _ in wired):
            failed.add(bid)
            continue
        port_info = {}
        for dst_port, src, src_port, e in wired:
            v = values[0].get((src, src_port))
            decl = g.nodes[src].get("decl", {}) if g.nodes[src]["role"] == "input" else {}
            port_info[dst_port] = PortInfo(e["kind"], shape_of(v), getattr(v, "dtype", None), e["ref"], decl)
        infos[bid] = port_info
        owner = data["owner"]
        if owner == bid:
            ctx = BuildContext(bid, meta=True, spec_dir=spec.dir, device="meta")
            try:
                with torch.device("meta"), ParameterBudget(bid, data["type"]):
                    modules[bid] = data["cls"](data["params"], port_info, ctx)
                    with_lora(modules[bid], bid, data)
            except Exception as e:
                _report_build_error(e, bid, data, wired, port_info, issues)
                failed.add(bid)
                continue
        elif owner not in modules:
            failed.add(bid)
            if owner not in failed:
                issues.add(f"share: '{owner}' is computed from this block's outputs, so its module cannot be shared here",
                           ("blocks", bid, "share"), block=bid)
            continue  # otherwise the shared block failed to build and was reported
        module = modules[owner]
        ok = True
        for i in range(len(PROBE_BATCHES)):
            kwargs = {dst_port: values[i].get((src, src_port)) for dst_port, src, src_port, _ in wired}
            try:
                with torch.device("meta"), torch.no_grad():
                    out = module.meta_forward(**kwargs)
            except Exception as e:
                _report_build_error(e, bid, data, wired, port_info, issues, probing=True)
                failed.add(bid)
                ok = False
                break
            if not _check_outputs(out, bid, data, issues):
                failed.add(bid)
                ok = False
                break
            for port, v in out.items():
                values[i][(bid, port)] = v
        if ok:
            for port in data["out_ports"]:
                if (bid, port) in values[0]:
                    shapes[(bid, port)] = symbolic([shape_of(v.get((bid, port))) for v in values])
    issues.raise_if_errors()

    if str(device) != "meta":
        for bid in D.build_order(g):
            data = g.nodes[bid]
            if data["owner"] != bid:
                continue
            ctx = BuildContext(bid, meta=False, spec_dir=spec.dir, device=device)
            try:
                with torch.device(device):
                    modules[bid] = data["cls"](data["params"], infos[bid], ctx)
                    with_lora(modules[bid], bid, data)
            except Exception as e:
                _report_build_error(e, bid, data, D.in_edges(g, bid), infos[bid], issues)
        issues.raise_if_errors()
    for bid, module in modules.items():
        if g.nodes[bid]["train"].get("freeze"):
            module.requires_grad_(False)
    record_step_ports(g, modules, issues)
    issues.raise_if_errors()
    return modules, shapes, infos


def record_step_ports(g, modules, issues):
    """Each block node's processor-step ports (Block.step_ports for its wiring) as node data
    'step_ports', which the lowering reads. A step reads graph inputs, or ports an earlier step
    makes (NODE.PORT); a value the graph computes does not exist before the graph runs."""
    for bid in D.build_order(g):
        owner = g.nodes[bid]["owner"]
        if owner not in modules:
            continue
        wired = D.in_edges(g, bid)
        ports = modules[owner].step_ports(frozenset(p for p, _, _, _ in wired))
        g.nodes[bid]["step_ports"] = ports
        if ports is None:
            continue
        for port, src, src_port, e in wired:
            if port not in ports.reads or g.nodes[src]["role"] == "input":
                continue
            made = g.nodes[src].get("step_ports")
            if made is None or src_port not in made.makes:
                issues.add(f"edge {e['ref']} -> {bid}.{port}: {g.nodes[bid]['type']}'s processor step reads '{port}' "
                           f"before the graph runs, but {e['ref']} is computed in the graph; wire a graph input (or a "
                           "port a processor step makes, e.g. glue.state_text's text)", ("blocks", bid, "in", port), block=bid)


def with_lora(module, bid, data):
    """LoRA adapters where the block's spec asks for them (train.lora; blocks/lora.py)."""
    opts = data["train"].get("lora")
    if opts is None:
        return
    try:
        apply_lora(module, opts, data["train"])
    except LoraSpecError as e:
        path = ("train",) + (("freeze",) if e.key == "freeze" else ("lora", e.key))  # under blocks.<id>
        raise SpecError([SpecIssue(str(e), path)]) from None


MAX_PARAMETER_TENSORS = 20_000  # a 70B-parameter LLM has about a thousand
MAX_SUBMODULES = 10_000


class ParameterBudget:
    """Stops a block constructor that creates an absurd number of parameter tensors or
    submodules (e.g. `layers: 100000000` from a typo) instead of letting compile run for hours."""

    def __init__(self, bid, type_name):
        self.bid, self.type_name = bid, type_name
        self.params = self.modules = 0
        self.handles = []

    def _on_parameter(self, module, name, param):
        self.params += 1
        if self.params > MAX_PARAMETER_TENSORS:
            self._stop(f"more than {MAX_PARAMETER_TENSORS} parameter tensors")

    def _on_module(self, module, name, submodule):
        self.modules += 1
        if self.modules > MAX_SUBMODULES:
            self._stop(f"more than {MAX_SUBMODULES} submodules")

    def _stop(self, what):
        raise BudgetExceeded(f"{self.type_name} creates {what}; is a size in `with:` (layers, ...) far too large?")

    def __enter__(self):
        hooks = torch.nn.modules.module
        self.handles = [hooks.register_module_parameter_registration_hook(self._on_parameter),
                        hooks.register_module_module_registration_hook(self._on_module)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


class BudgetExceeded(RuntimeError):
    pass


def _check_outputs(out, bid, data, issues) -> bool:
    if not isinstance(out, dict):
        issues.add(f"block type {data['type']} returned {type(out).__name__}, not a dict of output ports", ("blocks", bid), block=bid)
        return False
    unknown = set(out) - set(data["out_ports"])
    if unknown:
        issues.add(f"block type {data['type']} returned undeclared ports {sorted(unknown)}", ("blocks", bid), block=bid)
        return False
    for port, v in out.items():
        if data["out_ports"][port].kind == "loss" and isinstance(v, torch.Tensor) and v.dim() != 0:
            issues.add(f"loss port '{port}' of {data['type']} is not a scalar (shape {list(v.shape)})", ("blocks", bid), block=bid)
            return False
    return True


def _report_build_error(e, bid, data, wired, port_info, issues, probing=False):
    if isinstance(e, PortError):
        src = next((edge["ref"] for p, _, _, edge in wired if p == e.port), None)
        info = port_info.get(e.port)
        got = f" (got shape {list(info.shape)})" if info is not None and info.shape is not None else ""
        if src:
            msg = f"edge {src} -> {bid}.{e.port}: {e}{got}"
        else:
            msg = f"port {bid}.{e.port}: {e}"
        issues.add(msg, ("blocks", bid, "in", e.port) if src else ("blocks", bid, "in"), block=bid)
    elif isinstance(e, ParamError):
        # a `with:` value that disagrees with a wired input: name that edge too
        edges = [f"{edge['ref']} -> {bid}.{p}" for p, _, _, edge in wired if edge["ref"] in str(e)]
        where = f" (edge {', '.join(edges)})" if edges else ""
        issues.add(f"{data['type']}: {e}{where}", ("blocks", bid, "with", e.key), block=bid)
    elif isinstance(e, SpecError):
        for i in e.issues:
            issues.add(i.message, ("blocks", bid) + tuple(i.path), block=bid, hint=i.hint)
    elif isinstance(e, BudgetExceeded):
        issues.add(str(e), ("blocks", bid, "with"), block=bid)
    else:
        inputs = ", ".join(f"{p}={list(i.shape) if i.shape is not None else i.kind} from {i.source}" for p, i in port_info.items())
        what = "shape check (meta tensors) failed" if probing else "could not build"
        issues.add(f"{what} for {data['type']}: {type(e).__name__}: {first_line(e)}", ("blocks", bid), block=bid,
                   hint=f"inputs: {inputs}" if inputs else None)
        if getattr(issues, "debug", False):
            traceback.print_exc()
