"""A ready inference policy: `Policy.from_compiled(cg, normalizer)`, or `load_policy(RUN)` (runners/loading.py).

`infer(obs)` takes one observation keyed by input port (numpy arrays / str, unbatched), checks
it against the graph's inference inputs, batches, normalizes, runs `cg.infer` under no_grad in
eval mode and returns un-normalized numpy outputs ({'actions': float32 [H, A], ...}).
The policy server and the eval clients use exactly this API."""
from __future__ import annotations

import numpy as np
import torch

from ..blocks.base import device_of


class Policy:
    def __init__(self, cg, normalizer=None):
        self.cg, self.normalizer = cg, normalizer
        self.device = device_of(cg.model)
        cg.model.eval()
        cg.infer.eval()
        extras = {k for n in cg.dag.nodes if cg.dag.nodes[n]["role"] == "block" for k in cg.dag.nodes[n]["cls"].predict_kwargs}
        self.inputs, self.optional = {}, set()
        for node in cg.infer.graph.nodes:
            if node.op == "placeholder" and node.target not in extras:
                self.inputs[node.target] = dict(cg.spec.inputs[node.target])
                if node.args:
                    self.optional.add(node.target)
        self.outputs = list(cg.spec.outputs)
        self._norm_port = {name: self._normalized_port(name) for name in self.outputs}

    @classmethod
    def from_compiled(cls, cg, normalizer=None) -> "Policy":
        return cls(cg, normalizer)

    # metadata ---------------------------------------------------------------------------------
    def _output_source(self, name):
        ((src, _, e),) = self.cg.dag.in_edges("output." + name, data=True)
        return src, e

    def _normalized_port(self, output: str) -> str | None:
        """The input port whose statistics un-normalize this output (the action port it predicts)."""
        modes = self.normalization_modes()
        if output in self.cg.spec.inputs:
            return output if output in modes else None
        _, e = self._output_source(output)
        same_kind = [p for p, d in self.cg.spec.inputs.items() if d.get("kind") == e["kind"] and p in modes]
        return same_kind[0] if len(same_kind) == 1 else None

    def normalization_modes(self) -> dict:
        if self.normalizer is None:
            return {}
        modes = getattr(self.normalizer, "modes", None)
        if modes is None:
            modes = (self.normalizer.to_dict() or {}).get("modes", {})
        return dict(modes)

    @property
    def metadata(self) -> dict:
        horizon = dim = None
        action_out = "actions" if "actions" in self.outputs else next(
            (o for o in self.outputs if self._output_source(o)[1]["kind"] == "action"), None)
        if action_out is not None:
            src, e = self._output_source(action_out)
            shape = self.cg.shapes.get((src, e["src_port"]))
            if shape and len(shape) == 3:
                horizon, dim = int(shape[1]), int(shape[2])
        return {"name": self.cg.name, "fingerprint": self.cg.fingerprint, "action_horizon": horizon,
                "action_dim": dim, "inputs": {k: dict(v) for k, v in self.inputs.items()},
                "outputs": list(self.outputs), "normalization": self.normalization_modes()}

    # inference --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode: forget cached slow-system outputs."""
        reset = getattr(self.cg, "reset_caches", None)
        if reset is not None:
            reset()

    def infer(self, obs: dict, **options) -> dict:
        return self.infer_batch([obs], **options)[0]

    @torch.no_grad()
    def infer_batch(self, observations: list, **options) -> list[dict]:
        if not observations:
            return []
        batch = {}
        for port, decl in self.inputs.items():
            present = [port in o and o[port] is not None for o in observations]
            if not any(present) and port in self.optional:
                continue
            if not all(present):
                i = present.index(False)
                raise ValueError(f"observation {i} lacks '{port}' (expected {describe(decl)})")
            values = [convert(port, decl, o[port]) for o in observations]
            batch[port] = values if decl["kind"] == "text" else torch.stack(values).to(self.device)
        if self.normalizer is not None:
            out = self.normalizer.normalize(batch)
            batch = batch if out is None else out
        result = self.cg.infer(**batch, **options)
        per_output = {}
        for name, value in result.items():
            port = self._norm_port.get(name)
            if port is not None and isinstance(value, torch.Tensor):
                value = self.normalizer.unnormalize(port, value.float())
            per_output[name] = value
        return [{name: _item(value, i) for name, value in per_output.items()} for i in range(len(observations))]


def _item(value, i):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value[i].float().numpy() if value.is_floating_point() else value[i].numpy()
    if isinstance(value, np.ndarray):
        return value[i].astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value[i]
    if isinstance(value, (list, tuple)):
        return value[i]
    return value


# observation checks --------------------------------------------------------------------------
def expected_shape(decl: dict) -> list:
    kind = decl["kind"]
    if kind == "image":
        h, w = decl["size"]
        return [decl.get("views", 1), decl.get("channels", 3), h, w]
    if kind == "state":
        return [decl["dim"]] if decl.get("history", 1) == 1 else [decl["history"], decl["dim"]]
    if kind == "action":
        return [decl["horizon"], decl["dim"]]
    if kind in ("mask", "tokens"):
        return list(decl["shape"])
    return []


def describe(decl: dict) -> str:
    kind = decl["kind"]
    if kind == "text":
        return "a string"
    if kind == "image":
        v, c, h, w = expected_shape(decl)
        return f"uint8 [{v}, {h}, {w}, {c}] (or [{h}, {w}, {c}] for one view) or float [{v}, {c}, {h}, {w}] in [0, 1]"
    return f"{kind} of shape {expected_shape(decl)}"


def convert(port: str, decl: dict, value):
    """One unbatched observation value -> the tensor (or str) the graph takes."""
    kind = decl["kind"]
    if kind == "text":
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value.item()
        if not isinstance(value, str):
            raise ValueError(f"observation '{port}': expected a string, got {type(value).__name__}")
        return value
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise ValueError(f"observation '{port}': expected {describe(decl)}, got dtype {arr.dtype}")
    want = expected_shape(decl)
    if kind == "image":
        return _image(port, decl, arr, want)
    if kind == "mask":
        if arr.dtype != np.bool_ and arr.dtype.kind not in "iu":
            raise ValueError(f"observation '{port}': expected a boolean mask of shape {want}, got dtype {arr.dtype}")
        arr = arr.astype(bool)
    elif kind == "tokens":
        if arr.dtype.kind not in "iu":
            raise ValueError(f"observation '{port}': expected integer tokens of shape {want}, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    else:
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"observation '{port}': expected numbers of shape {want}, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    if list(arr.shape) != want:
        raise ValueError(f"observation '{port}': expected shape {want}, got {list(arr.shape)}")
    return torch.from_numpy(np.array(arr, order="C"))  # a copy: client arrays may be read-only views


def _image(port, decl, arr, want):
    v, c, h, w = want
    if arr.dtype == np.uint8:
        if arr.ndim == 3 and v == 1:
            arr = arr[None]
        if list(arr.shape) != [v, h, w, c]:
            raise ValueError(f"observation '{port}': expected {describe(decl)}, got uint8 {list(arr.shape)}")
        return torch.from_numpy(np.array(arr, order="C")).permute(0, 3, 1, 2).float().div_(255.0)
    if arr.dtype.kind != "f":
        raise ValueError(f"observation '{port}': expected {describe(decl)}, got dtype {arr.dtype}")
    if arr.ndim == 3 and v == 1:
        arr = arr[None]
    if list(arr.shape) != [v, c, h, w]:
        raise ValueError(f"observation '{port}': expected {describe(decl)}, got float {list(arr.shape)}")
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))
