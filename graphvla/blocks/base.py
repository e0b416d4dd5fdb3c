"""The block contract: an nn.Module with declared ports, a JSON schema for its `with:` params,
`forward` (training path, returns losses when targets are given) and `predict` (inference path).

Blocks are built by the compiler in topological order. At construction a block sees the kind and
shape of every wired input (`PortInfo`), so it infers its own dimensions (context width, action
dim, horizon) from the graph instead of asking the user to repeat them.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import hub

# Kinds of values that travel on edges. `any` on an input port accepts every kind.
KINDS = {
    "image": "float images in [0, 1], [B, views, C, H, W]",
    "text": "list of B strings",
    "state": "proprioceptive state, [B, dim] or [B, history, dim]",
    "action": "action chunk, [B, horizon, dim]",
    "mask": "boolean mask, [B, ...]",
    "tokens": "integer token ids, [B, L]",
    "hidden": "hidden states / features, [B, T, D] or [B, D]",
    "layers": "hidden states of several layers, [B, layers, T, D]",
    "latent": "latent observation codes, [B, ..., D]",
    "loss": "scalar loss",
    "any": "anything",
}


@dataclass(frozen=True)
class InPort:
    kinds: tuple  # accepted kinds
    optional: bool = False
    target: bool = False  # a training target: never wired in the inference graph
    ndim: tuple | None = None  # accepted ranks including the batch dim (None: any)
    doc: str = ""

    def __post_init__(self):
        if isinstance(self.kinds, str):
            object.__setattr__(self, "kinds", (self.kinds,))
        if isinstance(self.ndim, int):
            object.__setattr__(self, "ndim", (self.ndim,))

    def accepts(self, kind: str) -> bool:
        return "any" in self.kinds or kind in self.kinds


@dataclass(frozen=True)
class OutPort:
    kind: str
    train_only: bool = False  # produced only by forward() with targets (losses, ...)
    infer_only: bool = False  # produced only by predict() (e.g. generated tokens): no loss can use it
    doc: str = ""


@dataclass(frozen=True)
class PortInfo:
    """What a block knows, at construction, about a value wired into one of its ports."""

    kind: str
    shape: tuple | None  # probe shape, batch first; None for non-tensors (text)
    dtype: Any = None
    source: str = ""  # 'inputs.images' or 'vlm.hidden'
    decl: dict = field(default_factory=dict)  # the spec's declaration when source is an input

    @property
    def dim(self) -> int:
        """Width of the last axis (feature / action / state dim)."""
        if not self.shape:
            raise ValueError(f"{self.source} has no tensor shape")
        return int(self.shape[-1])


@dataclass
class BuildContext:
    block_id: str
    meta: bool = False  # building on the meta device: never load weights from disk
    spec_dir: Path = Path(".")  # relative paths in `with:` resolve against the spec's folder
    device: Any = "cpu"

    def resolve_path(self, path: str, key: str | None = None) -> Path:
        """A `with:` path, relative to the spec's folder. A Hugging Face Hub id (`org/name` or
        `org/name@revision`, where no such local path exists) gives its snapshot folder in the Hub
        cache (graphvla/hub.py); on meta no weight file is fetched. An id that cannot be resolved is
        a ParamError on with.`key` (a HubError without a key)."""
        try:
            return hub.resolve(path, base=self.spec_dir, weights=not self.meta)
        except hub.HubError as e:
            if key is None:
                raise
            raise ParamError(key, str(e)) from None


class parameters_on_meta:
    """Within it, every parameter a module registers in this thread is moved to the meta device
    while buffers stay where they are made: blocks build for real (tokenizers, processors, rotary
    tables) without allocating, initializing or reading weights, which the caller then assigns
    from a checkpoint (graphvla/policy/loading.py). nn.Module.register_parameter is patched while
    any thread is inside one; other threads' modules are left alone."""

    _local = threading.local()  # this thread's depth of parameters_on_meta blocks
    _lock = threading.Lock()
    _entered = 0  # all threads'
    _original = None

    def __enter__(self):
        cls = type(self)
        with cls._lock:
            if cls._entered == 0:
                cls._original = nn.Module.register_parameter
                nn.Module.register_parameter = _register_placeholder
            cls._entered += 1
        cls._local.depth = getattr(cls._local, "depth", 0) + 1
        return self

    def __exit__(self, *exc):
        cls = type(self)
        cls._local.depth -= 1
        with cls._lock:
            cls._entered -= 1
            if cls._entered == 0:
                nn.Module.register_parameter = cls._original
        return False


def _register_placeholder(module, name, param):
    if parameters_are_placeholders() and param is not None and not param.is_meta:
        param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
    parameters_on_meta._original(module, name, param)


def parameters_are_placeholders() -> bool:
    """Whether a block being built in this thread should read no weight file (inside parameters_on_meta)."""
    return getattr(parameters_on_meta._local, "depth", 0) > 0


@dataclass(frozen=True)
class StepPorts:
    """What a block's processor step does for one node: `reads` are raw input ports the step takes
    instead of forward/predict; `makes` the ports it makes ({port: OutPort}, train_only ones only
    when their targets are in the batch), passed to forward/predict by the same name."""

    reads: tuple
    makes: dict


class PortError(ValueError):
    """Raised by a block's constructor when a wired input does not fit (names the port)."""

    def __init__(self, port: str, message: str):
        self.port = port
        super().__init__(message)


class ParamError(ValueError):
    """Raised by a block's constructor when a `with:` value does not fit (names the key)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


class Block(nn.Module):
    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    in_ports: ClassVar[dict] = {}
    out_ports: ClassVar[dict] = {}
    params_schema: ClassVar[dict] = {"type": "object", "properties": {}, "additionalProperties": False}
    # Extra keyword arguments `predict` takes at run time (e.g. 'noise', 'num_steps'). The
    # inference graph exposes them as optional arguments and passes them through.
    predict_kwargs: ClassVar[tuple] = ()

    def __init__(self, params: dict, inputs: dict, ctx: BuildContext):
        super().__init__()
        self.params = with_defaults(self.params_schema, params)
        self.port_info = dict(inputs)
        self.block_id = ctx.block_id

    def forward(self, **ports) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, **ports) -> dict:
        """Inference path. Default: forward() without targets."""
        return self.forward(**ports)

    def meta_forward(self, **ports) -> dict:
        """Shape probing on meta tensors. Override when forward() needs real values."""
        return self.forward(**ports)

    # Data work (tokenizers, processors, prompts) is declared, not done in forward: a block with a
    # processor step says which raw input ports its step reads instead of forward (`step_ports`)
    # and which tensor ports it makes for forward/predict; the compiled graphs take those as
    # inputs named BLOCK_PORT, made by the step as BLOCK.PORT in `cg.preprocess` (processors/block.py).
    def step_ports(self, wired) -> "StepPorts | None":
        """The step's ports for a node of this block whose wired input ports are `wired` (a shared
        block's nodes differ); None: the block has no step."""
        return None

    def processor_step(self, node: str | None = None, sources: dict | None = None):
        """The block's processor step (processors.base.ProcessorStep) bound to node `node` (default
        this block) reading `sources` (port -> batch key; default from this block's wiring), or
        None: no step. Built on meta, a step whose tokenizer or processor was not read only
        describes itself (`graphvla compile`); running or saving it is an error naming the block."""
        return None

    def extra_repr(self) -> str:
        return f"type={self.type_name}"

    @classmethod
    def ports_for(cls, params: dict) -> tuple[dict, dict]:
        """(in_ports, out_ports) for given params; override when ports depend on params."""
        return cls.in_ports, cls.out_ports

    # helpers for subclasses -------------------------------------------------------------
    def expect_ndim(self, port: str, ndims):
        info = self.port_info.get(port)
        ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
        if info is not None and info.shape is not None and len(info.shape) not in ndims:
            raise PortError(port, f"expects a tensor of rank {' or '.join(map(str, ndims))}, got shape {list(info.shape)}")


def with_defaults(schema: dict, params: dict | None) -> dict:
    """Fill top-level `default`s of a JSON schema into params (a copy)."""
    out = copy.deepcopy(params or {})
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and isinstance(sub, dict) and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    return out


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
