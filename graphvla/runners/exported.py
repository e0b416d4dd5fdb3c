"""A policy folder written by `graphvla export` (runners/export.py), ready to serve:
`load_exported(DIR)` -> ExportedPolicy.

It speaks the Policy API the server and the eval clients use (`metadata`, `infer`,
`infer_batch(observations, sessions=...)`, `new_session`, `reset`) with the metadata saved at
export time, so `graphvla serve DIR` publishes the same metadata and answers the same actions as
`graphvla serve RUN`. Each observation value is checked by the checkpoint's own validator
(policy/observation.py); the checkpoint's processor steps that are not folded into the graph
(tokenizers, a backbone.hf_vlm's processor: saved in the folder as `preprocess.json` plus
`preprocess/`, loaded without the training code) run here, in Python, in their order, and make the
token ids and pixel values the graph takes; text a block takes itself is tokenized by the
manifest's `tokenizers`. A prompt longer than a graph input's token axis allows is refused naming
the text port and the block.
An exported graph keeps no state between calls (export refuses `every: k` caches). A sampling head's
starting noise is a graph input: it is drawn here, for each row from its session's generator (or
from torch's global generator without sessions), exactly as the checkpoint's head draws it (the
distribution the manifest records, blocks/heads/noise.py), so a session replays and its actions
equal those of `graphvla serve RUN` with the same seed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..blocks.encoders import byte_tokenize
from ..blocks.heads.noise import NORMAL, draw as draw_noise
from ..processors.base import Pipeline
from .export import FORMATS, MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, NOISE, PYTHON_STEPS
from ..policy.observation import convert, describe
from ..policy.rtc import RTCRequestError
from ..protocol import RTC_KEY
from ..policy.ensemble import TemporalEnsemble, checked_coeff, fold_rows
from ..policy.session import Session
from ..policy.window import ObservationWindow

TOKENIZERS = {"bytes": lambda texts, t: byte_tokenize(texts, int(t["max_length"]), "cpu")}


def read_manifest(folder) -> dict:
    """The manifest of an export folder, checked (format, version, graph file and its hash)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}; not a folder written by graphvla export")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format is {manifest.get('format')!r}, expected '{MANIFEST_FORMAT}'")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: version {manifest.get('version')!r} is not supported (this graphvla reads "
                         f"version {MANIFEST_VERSION}); export the checkpoint again")
    if manifest.get("graph_format") not in FORMATS:
        raise ValueError(f"{path}: graph_format {manifest.get('graph_format')!r} is not one of {', '.join(FORMATS)}")
    graph = folder / str(manifest.get("graph_file"))
    if not graph.is_file():
        raise FileNotFoundError(f"{path}: graph_file {graph.name} is missing from {folder}")
    if hashlib.sha256(graph.read_bytes()).hexdigest() != manifest.get("graph_sha256"):
        raise ValueError(f"{graph}: its sha256 differs from the manifest's graph_sha256; the file was changed "
                         "after export")
    return manifest


class _TorchRunner:
    def __init__(self, path: Path):
        self.module = torch.export.load(str(path)).module()

    def __call__(self, tensors: list) -> list:
        with torch.no_grad():
            return [t.detach() for t in self.module(*tensors)]


class _OnnxRunner:
    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise RuntimeError(f"{path} is an ONNX graph: serving it needs onnxruntime "
                               "(pip install 'graphvla[export]')") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, tensors: list) -> list:
        feeds = {n: t.numpy() for n, t in zip(self.names, tensors)}
        return [torch.from_numpy(np.asarray(v)) for v in self.session.run(None, feeds)]


class ExportedPolicy:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        graph = self.folder / self.manifest["graph_file"]
        self.runner = (_TorchRunner if self.manifest["graph_format"] == "torch-export" else _OnnxRunner)(graph)
        meta = self.manifest["metadata"]
        self.inputs = {port: dict(decl) for port, decl in meta["inputs"].items()}  # what an observation holds
        self.window = ObservationWindow.from_metadata(meta)  # infer.observation_window: frames kept here
        self._windows = {}  # row -> frames of calls without sessions
        self._ensembles = {}  # row -> TemporalEnsemble of calls without sessions (reset() clears them)
        self.noise = next((d for d in self.manifest["inputs"] if d["name"] == NOISE), None)
        self.outputs = list(self.manifest["outputs"])
        self.tokenizers = dict(self.manifest.get("tokenizers") or {})
        # the checkpoint's processor steps that run before the graph (tokenizers), saved in the folder
        steps = (self.manifest.get("preprocess") or {}).get("file")
        self.preprocess = Pipeline.load(self.folder, PYTHON_STEPS) if steps else Pipeline(PYTHON_STEPS, [])
        for port, t in self.tokenizers.items():
            if t.get("tokenizer") not in TOKENIZERS:
                raise ValueError(f"{self.folder / MANIFEST}: tokenizers.{port}: unknown tokenizer "
                                 f"{t.get('tokenizer')!r} (known: {', '.join(TOKENIZERS)})")

    @property
    def metadata(self) -> dict:
        meta = {**self.manifest["metadata"], "exported": self.manifest["graph_format"]}
        if getattr(self, "_temporal_ensemble", None) is not None:  # set_temporal_ensemble (serve.temporal_ensemble)
            meta["temporal_ensemble"] = {"coeff": self._temporal_ensemble}
        return meta

    def set_temporal_ensemble(self, coeff: float) -> None:
        """Serve with temporal ensembling (policy/ensemble.py) whatever the checkpoint's infer section says."""
        self._temporal_ensemble = checked_coeff(coeff, self.metadata["action_horizon"])
        self.reset()

    def new_session(self, seed: int = 0) -> Session:
        return Session(seed)

    def reset(self) -> None:
        """An exported graph keeps no state between calls; only the temporal ensembles of calls without
        a session are forgotten."""
        self._ensembles = {}
        self._windows = {}

    def check_rtc_request(self, value):
        """The server checks an observation's RTC_KEY here: an exported graph does no real-time chunking."""
        raise RTCRequestError(f"'{RTC_KEY}': an exported policy does not do real-time chunking")

    def infer(self, obs: dict, session: Session | None = None, **options) -> dict:
        return self.infer_batch([obs], None if session is None else [session], **options)[0]

    def infer_batch(self, observations: list, sessions: list | None = None, **options) -> list[dict]:
        if options:
            raise ValueError(f"an exported policy takes no inference options (got {', '.join(sorted(options))})")
        if not observations:
            return []
        if sessions is not None and len(sessions) != len(observations):
            raise ValueError(f"{len(sessions)} sessions for {len(observations)} observations")
        frames = ([dict(getattr(s, "window", None) or {}) for s in sessions] if sessions is not None
                  else [dict(self._windows.get(i, {})) for i in range(len(observations))])
        tensors = self.tensors(observations, frames)
        states = [s.generator.get_state() for s in sessions] if sessions is not None else None
        if self.noise is not None:
            shape = (len(observations), *self.noise["shape"][1:])
            generators = [s.generator for s in sessions] if sessions is not None else None
            # drawn as the head draws it: the distribution its export recorded (blocks/heads/noise.py)
            tensors.append(draw_noise(self.noise.get("distribution", NORMAL), shape, generators, torch.device("cpu"),
                                      torch.float32))
        try:
            outs = self.runner(tensors)
        except BaseException:  # as Policy: a failed batch moves no session
            for s, state in zip(sessions or [], states or []):
                s.generator.set_state(state)
            raise
        for s, f in zip(sessions or [], frames):
            s.steps += 1
            s.window = f
        if sessions is None and self.window is not None:
            self._windows = dict(enumerate(frames))
        per_output = dict(zip(self.outputs, outs))
        rows = [{name: _row(value, i) for name, value in per_output.items()} for i in range(len(observations))]
        ensemble = self.metadata.get("temporal_ensemble")
        if ensemble and "actions" in per_output:  # the checkpoint's infer.temporal_ensemble, per session
            horizon = int(self.metadata["action_horizon"])
            fold_rows(rows, "actions", sessions, self._ensembles, lambda: TemporalEnsemble(ensemble["coeff"], horizon))
        return rows

    def tensors(self, observations: list, frames: list | None = None) -> list:
        """The graph's inputs for a batch, in the manifest's order (the checks Policy makes), the
        noise excepted (infer_batch draws it). frames: per row, its observation window (updated in place)."""
        values = {}
        for port, decl in self.inputs.items():
            missing = [i for i, o in enumerate(observations) if o.get(port) is None]
            if missing:
                raise ValueError(f"observation {missing[0]} lacks '{port}' (expected {describe(decl)})")
            values[port] = [convert(port, decl, o[port]) for o in observations]
            if self.window is not None and port in self.window.ports:
                frames = frames if frames is not None else [{} for _ in observations]
                values[port] = [self.window.push(port, v, f) for v, f in zip(values[port], frames)]
        batch = self.preprocess({port: v if self.inputs[port]["kind"] == "text" else torch.stack(v)
                                 for port, v in values.items()})
        out = []
        for d in self.manifest["inputs"]:
            value = batch.get(d["name"])
            if "max_length" in d and isinstance(value, torch.Tensor) and value.shape[1] > int(d["max_length"]):
                raise ValueError(f"'{d.get('text', d['name'])}': the prompt is {value.shape[1]} tokens long; block "
                                 f"'{d['step']}' takes at most {d['max_length']}")
            if d["name"] == NOISE:
                continue
            elif d["kind"] == "text":
                t = self.tokenizers[d["port"]]
                out.append(TOKENIZERS[t["tokenizer"]](values[d["port"]], t))
            else:
                out.append(batch[d["name"]])
        return out


def _row(value: torch.Tensor, i: int):
    value = value[i]
    return value.float().numpy() if value.is_floating_point() else value.numpy()


def load_exported(folder) -> ExportedPolicy:
    return ExportedPolicy(folder)
