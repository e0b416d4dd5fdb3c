"""Every-k caches: the inference state of `infer: {every: k}` blocks (a slow System 2 beside a fast
System 1), kept by the runtime, not by the compiled graph.

The compiler only records which inference blocks run every k calls (`CompiledGraph.every_k`:
block id -> (owner, every, method)); its `cg.infer` runs every block on every call and keeps no
state. `cached_infer(cg, rows)` is the inference GraphModule the Policy runs: the same graph with
each of those blocks behind an `EveryK` wrapper. The wrappers share one `CallRows` object owned by
the Policy, which says for the call in progress (in this thread) whose caches the rows use:

- none (a plain call): one cache per wrapper, refreshed on its k-th call or when the batch size
  changes; `reset_caches(gm)` starts over (a new episode);
- `rows.caches[i]`, a dict owned by row i's Session: each wrapper keeps (calls, outputs computed for
  that row alone) under its own key, so a row gets exactly what its episode would get alone.

`CallRows` is thread-local because the server answers several batches at once from a thread pool."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import fx, nn


class RaggedRows(RuntimeError):
    """Per-row outputs of an `every: k` block that cannot be stacked into one batch (their shapes
    differ beyond the batch dimension, e.g. token sequences of different lengths). The caller runs
    the rows one by one instead (Policy.infer_batch does)."""


class CallRows(threading.local):
    """Whose caches the call in progress uses (per thread): None, or (caches, computed) where
    caches[i] is row i's session dict and computed[i] (optional) collects row i's fresh outputs, so
    a retry of the same rows (after RaggedRows) reuses them."""

    def __init__(self):
        self.rows = None

    @contextmanager
    def use(self, caches: list, computed: list | None = None):
        previous, self.rows = self.rows, (caches, computed)
        try:
            yield
        finally:
            self.rows = previous


class EveryK(nn.Module):
    """Runs the wrapped block's `method` on the first call and every k-th call after, returning the
    cached outputs in between. Inside `CallRows.use(...)` each row has its own counter and cache in
    its own dict: a row that is due runs the block on that row alone, and the rows' outputs are
    stacked for the rest of the graph."""

    def __init__(self, block: nn.Module, every: int, method: str, rows: CallRows):
        super().__init__()
        self.block, self.every, self.method = block, every, method
        self._rows = rows  # shared with the Policy; not a submodule, not state
        self.reset()

    def reset(self):
        self.calls, self.cache, self.cache_batch = 0, None, None

    def forward(self, **ports):
        rows = self._rows.rows
        if rows is not None:
            return self._per_row(ports, *rows)
        batch = batch_size(ports)
        if self.cache is None or self.calls % self.every == 0 or batch != self.cache_batch:
            self.cache = getattr(self.block, self.method)(**ports)
            self.cache_batch = batch
            self.calls = 0
        self.calls += 1
        return self.cache

    def _per_row(self, ports, caches, computed):
        batch = batch_size(ports)
        if batch is not None and batch != len(caches):
            raise ValueError(f"{len(caches)} row caches for a batch of {batch}")
        outs, entries = [], []
        for i, cache in enumerate(caches):
            calls, out = cache.get(self, (0, None))
            if out is None or calls % self.every == 0:
                out = computed[i].get(self) if computed is not None else None
                if out is None:
                    out = getattr(self.block, self.method)(**take_row(ports, i, batch))
                    if computed is not None:
                        computed[i][self] = out
                calls = 0
            outs.append(out)
            entries.append((calls + 1, out))
        stacked = stack_rows(outs)
        for cache, entry in zip(caches, entries):  # only once every row fits in the batch
            cache[self] = entry
        return stacked

    def extra_repr(self):
        return f"every={self.every}, method={self.method}"


def cached_infer(cg, rows: CallRows) -> fx.GraphModule:
    """cg.infer with each `every: k` block (cg.every_k) called through an EveryK wrapper reading
    `rows`. The blocks are shared with cg.model (no weight is copied); cg.infer itself is untouched.
    Returns cg.infer when the graph has no such block."""
    every_k = getattr(cg, "every_k", None) or {}
    if not every_k:
        return cg.infer
    graph = fx.Graph()
    out = graph.graph_copy(cg.infer.graph, {})
    graph.output(out)
    modules = dict(cg.infer.named_children())
    for node in list(graph.nodes):
        bid = node.meta.get("block")
        if bid not in every_k or node.op not in ("call_module", "call_method"):
            continue
        owner, every, method = every_k[bid]
        name = f"{bid}_every{every}"
        modules[name] = EveryK(cg.model[owner], every, method, rows)
        with graph.inserting_before(node):
            wrapped = graph.call_module(name, (), dict(node.kwargs))
        wrapped.meta = dict(node.meta)
        node.replace_all_uses_with(wrapped)
        receiver = node.args[0] if node.op == "call_method" else None
        graph.erase_node(node)
        if isinstance(receiver, fx.Node) and not receiver.users:
            graph.erase_node(receiver)  # the get_attr of the block whose predict it called
    graph.lint()
    return fx.GraphModule(modules, graph, class_name=type(cg.infer).__name__)


def reset_caches(module: nn.Module) -> None:
    """Forget the process-wide caches of every EveryK under `module` (row caches belong to sessions)."""
    for m in module.modules():
        if isinstance(m, EveryK):
            m.reset()


def has_caches(module: nn.Module) -> bool:
    """Whether inference through `module` keeps state between calls."""
    return any(isinstance(m, EveryK) for m in module.modules())


def take_row(values: dict, i: int, batch: int | None) -> dict:
    """Row i of a map of batched values, as a batch of one: tensors whose leading dimension is the
    batch and lists of the batch's length (text, per-row generators) are sliced; the rest
    (num_steps, None) is passed as it is."""
    out = {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch:
            v = v[i:i + 1]
        elif isinstance(v, list) and len(v) == batch:
            v = v[i:i + 1]
        out[k] = v
    return out


def stack_rows(outs: list):
    """Batch-of-one outputs (dicts, tensors, lists) -> one batched output; RaggedRows when the
    tensors' shapes differ beyond the batch dimension."""
    first = outs[0]
    if len(outs) == 1:
        return first
    if isinstance(first, dict):
        return {k: stack_rows([o[k] for o in outs]) for k in first}
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return first  # not batched
        shapes = {tuple(o.shape[1:]) for o in outs}
        if len(shapes) > 1:
            raise RaggedRows(f"per-row outputs of shapes {sorted(shapes)} cannot be stacked")
        return torch.cat(outs, dim=0)
    if isinstance(first, list):  # one item per row (text)
        return [x for o in outs for x in o]
    if isinstance(first, tuple):
        return tuple(stack_rows(list(parts)) for parts in zip(*outs))
    return first  # not batched (None, a number): the same for every row


def batch_size(values: dict) -> int | None:
    """Batch size of a map of port values: the first tensor's leading dimension or the first list's
    length (a text port); None when there is neither."""
    for v in values.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
        if isinstance(v, list):
            return len(v)
    return None
