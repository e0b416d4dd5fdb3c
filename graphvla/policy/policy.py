"""A ready inference policy: `Policy.from_compiled(cg, normalizer)`, or `load_policy(RUN)` (policy/loading.py).

`infer(obs)` takes one observation keyed by input port (numpy arrays / str, unbatched), checks
it against the graph's inference inputs (runners/observation.py: the checks the server makes
too), batches, runs the `preprocess` pipeline (normalization, the blocks' processor steps), runs
`cg.infer` under no_grad in eval mode, then the `postprocess` pipeline (un-normalization), and
returns numpy outputs in dataset units ({'actions': float32 [H, A], ...}).
The policy server and the eval clients use exactly this API.

Episode state. Without sessions, the `infer: {every: k}` caches are the policy's own (one per
process, `reset()` clears them) and the sampling heads' starting noise (`draw_noise`) comes from
torch's global generator. With
`infer_batch(observations, sessions=[...])` (one runners/session.py Session per observation,
each at most once per batch; the policy server gives each connection one) every row reads and
advances only its own session: its cached blocks, its call counter, its noise generator, so a
row gets what its session would get alone in the batch. A batch is all or nothing: when the
forward fails, no session has moved.

Real-time chunking (runners/rtc.py): an observation may carry {RTC_KEY: {...}} (the delay and the
previous chunk's actions not yet run, or how many of the session's previous chunk ran); its row is
then inpainted (flow heads: guided sampling) or prefix-blended (other heads), and its output gets
an "rtc" entry saying what was done. A session keeps the last chunk it returned for this."""
from __future__ import annotations

import numpy as np
import torch

from ..blocks.base import device_of
from ..compiler.lower import graph_argument
from ..blocks.heads.flow_matching import Inpainting
from .window import ObservationWindow
from .caches import CallRows, RaggedRows, cached_infer, has_caches, reset_caches
from ..protocol import RTC_KEY
from ..spec.schema import privileged_ports
from . import rtc as R
from ..processors.normalize import normalization_steps
from .observation import convert, describe
from .ensemble import TemporalEnsemble, checked_coeff, fold_rows
from .session import Session


class Policy:
    def __init__(self, cg, normalizer=None, preprocess=None, postprocess=None):
        self.cg = cg
        # the processing pipelines: a checkpoint's as saved (policy/checkpoint.py read_pipelines), or
        # the compiled graph's bound to `normalizer`'s statistics (without one: no normalization)
        stats, modes = (None, None) if normalizer is None else (normalizer.stats, normalizer.modes)
        given = None if preprocess is None else normalization_steps(preprocess)[0]
        if normalizer is None and given is not None:  # a postprocess to derive: the given statistics
            stats, modes = given.stats, given.modes
        bound = cg.bound_pipelines(stats, modes)
        self.preprocess = bound[0] if preprocess is None else preprocess
        self.postprocess = bound[1] if postprocess is None else postprocess
        self._normalize, self._unnormalize = normalization_steps([self.preprocess, self.postprocess])
        self.device = device_of(cg.model)
        cg.model.eval()
        cg.infer.eval()
        # every-k blocks run behind caches this policy owns; _rows says whose caches a call uses
        self._rows = CallRows()
        self._infer = cached_infer(cg, self._rows).eval()
        for block in cg.model.values():  # FAST's hold action: declared in dataset units, predicted normalized
            if getattr(block, "hold_port", None) is not None:
                block.fallback = self._hold_in_graph_units(block.hold_port, block.hold)
        extras = {k for b in cg.block_ids() for k in cg.block(b).predict_kwargs}
        # the blocks whose predict takes starting noise (flow heads): the policy draws it (draw_noise)
        takes_noise = "noise" in {n.target for n in cg.infer.graph.nodes if n.op == "placeholder"}
        self._samplers = [b for b in cg.infer_block_ids() if takes_noise and "noise" in cg.block(b).predict_kwargs]
        self.samples = bool(self._samplers)
        self.inputs, self.optional = {}, set()
        self._arguments = {n.target for n in cg.infer.graph.nodes if n.op == "placeholder"}
        for node in cg.infer.graph.nodes:
            if node.op == "placeholder" and node.target not in extras and "batch_key" not in node.meta:
                self.inputs[node.target] = dict(cg.spec.inputs[node.target])
                if node.args:
                    self.optional.add(node.target)
        for name in cg.step_read_inputs():  # read by blocks' processor steps (a tokenizer's text)
            self.inputs.setdefault(name, dict(cg.spec.inputs[name]))
            if cg.spec.inputs[name].get("optional"):
                self.optional.add(name)
        self.outputs = list(cg.spec.outputs)
        # output -> the input port whose statistics un-normalize it (the postprocess step's choice)
        self._norm_port = {name: None if self._unnormalize is None else self._unnormalize.port_of(name)
                           for name in self.outputs}
        self.rtc = R.RTCConfig.from_spec(cg.spec)
        # temporal ensembling (infer.temporal_ensemble): each session's chunks folded into one action per step
        self.temporal_ensemble = ((cg.spec.section("infer") or {}).get("temporal_ensemble") or {}).get("coeff")
        self._ensembles = {}  # row -> TemporalEnsemble of calls without sessions (reset() clears them)
        # infer.observation_window (policy/window.py): the policy keeps each session's last N frames
        self.window = ObservationWindow.for_graph(int((cg.spec.section("infer") or {}).get("observation_window") or 1),
                                                  self.inputs)
        self._windows = {}  # row -> frames of calls without sessions (reset() clears them)
        self._action_output = "actions" if "actions" in self.outputs else next(
            (o for o in self.outputs if cg.output_source(o).kind == "action"), None)
        # a head that samples with guidance (head.flow_matching, head.dual_system) inpaints; others get blended
        self._guided, self._rtc_method = False, "blend"
        if self._action_output is not None:
            src = cg.output_source(self._action_output)
            self._guided = src.is_block and "rtc" in cg.block(src.node).predict_kwargs
            if self._guided:  # guidance (flow heads) or the head's own (head.layerwise_discrete_diffusion: known-prefix inpainting)
                self._rtc_method = getattr(cg.model[cg.block(src.node).owner], "rtc_method", "guidance")

    @classmethod
    def from_compiled(cls, cg, normalizer=None, preprocess=None, postprocess=None) -> "Policy":
        return cls(cg, normalizer, preprocess, postprocess)

    # metadata ---------------------------------------------------------------------------------

    def _hold_in_graph_units(self, port: str, hold):
        """A value in dataset units as the graph sees it: normalized by the preprocess step."""
        if self._normalize is not None and port in self._normalize.stats:
            return np.asarray(self._normalize.normalize_value(port, hold), dtype=np.float32)
        return np.asarray(hold, dtype=np.float32)

    def normalization_modes(self) -> dict:
        return {} if self._normalize is None else dict(self._normalize.modes)

    @property
    def metadata(self) -> dict:
        horizon = dim = None
        action_out = self._action_output
        if action_out is not None:
            src = self.cg.output_source(action_out)
            shape = self.cg.shapes.get((src.node, src.port))
            if shape and len(shape) == 3:
                horizon, dim = int(shape[1]), int(shape[2])
        return {"name": self.cg.name, "fingerprint": self.cg.fingerprint, "action_horizon": horizon,
                "action_dim": dim, "inputs": self._client_inputs(),
                "observation_window": None if self.window is None else self.window.describe(),
                "outputs": list(self.outputs), "normalization": self.normalization_modes(),
                # the graph reads simulator state no robot has: its results are a privileged upper bound
                "privileged": bool(privileged_ports(self.cg.spec)),
                # real-time chunking: how a request's remaining actions shape the next chunk (runners/rtc.py)
                "rtc": {"enabled": self.rtc.enabled, "method": self._rtc_method,
                        "max_delay": None if horizon is None else self.rtc.delay_limit(horizon),
                        "schedule": self.rtc.schedule, "max_guidance": self.rtc.max_guidance},
                "temporal_ensemble": None if self.temporal_ensemble is None else {"coeff": self.temporal_ensemble}}

    def _client_inputs(self) -> dict:
        """The ports an observation holds (the graph's inputs; windowed ports per frame)."""
        inputs = {k: dict(v) for k, v in self.inputs.items()}
        return inputs if self.window is None else self.window.client_inputs(inputs)

    # inference --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode: forget cached slow-system outputs (the policy's own caches, used
        by calls without a session; sessions reset themselves: Session.reset)."""
        reset_caches(self._infer)
        self._ensembles = {}
        self._windows = {}

    @property
    def has_caches(self) -> bool:
        """Whether inference keeps state between calls (an `infer: {every: k}` block)."""
        return has_caches(self._infer)

    def new_session(self, seed: int = 0) -> Session:
        """The episode state of one client (see the module docstring)."""
        return Session(seed)

    def infer(self, obs: dict, session: Session | None = None, **options) -> dict:
        return self.infer_batch([obs], None if session is None else [session], **options)[0]

    @torch.no_grad()
    def infer_batch(self, observations: list, sessions: list | None = None, **options) -> list[dict]:
        if not observations:
            return []
        if sessions is not None and len(sessions) != len(observations):
            raise ValueError(f"{len(sessions)} sessions for {len(observations)} observations")
        observations, rows = self._rtc_rows(observations, sessions)
        if sessions is None:
            frames = [dict(self._windows.get(i, {})) for i in range(len(observations))]
            outs = self._ensemble_rows(self._forward(observations, options, rows, frames))
            if self.window is not None:
                self._windows = dict(enumerate(frames))
            return outs
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a session can have only one observation in a batch")
        computed = [{} for _ in sessions]
        try:
            return self._session_forward(observations, sessions, computed, options, rows)
        except RaggedRows:
            # the cached blocks' per-session outputs differ in shape (e.g. instructions of different
            # token lengths): run the rows one by one, reusing the outputs already computed for them
            return [self._session_forward([o], [s], [c], options, [r])[0]
                    for o, s, c, r in zip(observations, sessions, computed, rows)]

    # real-time chunking ---------------------------------------------------------------------------
    def check_rtc_request(self, value) -> R.RTCRequest:
        """Check the value of an observation's RTC_KEY (raises RTCRequestError naming the key);
        the policy server calls this before a request joins a batch."""
        if not self.rtc.enabled:
            raise R.RTCRequestError(f"'{RTC_KEY}': real-time chunking is disabled for this graph (infer.rtc.enabled)")
        meta = self.metadata
        horizon, dim = meta["action_horizon"], meta["action_dim"]
        if horizon is None or self._action_output is None:
            raise R.RTCRequestError(f"'{RTC_KEY}': graph {self.cg.name} has no action chunk output to continue")
        if isinstance(value, R.RTCRequest):
            return value
        return R.parse_request(value, horizon, dim, self.rtc.delay_limit(horizon))

    def _rtc_rows(self, observations, sessions):
        """The observations without RTC_KEY, and per row (delay, remaining [R, A]) or None: rows
        with no request, with delay 0 (nothing committed) or with nothing to continue."""
        if not any(RTC_KEY in o for o in observations):
            return observations, [None] * len(observations)
        plain, rows = [], []
        for i, obs in enumerate(observations):
            obs = dict(obs)
            value = obs.pop(RTC_KEY, None)
            plain.append(obs)
            if value is None:
                rows.append(None)
                continue
            request = self.check_rtc_request(value)
            if request.executed is not None and sessions is None:
                raise R.RTCRequestError(f"'{RTC_KEY}.executed' needs a session (it refers to the session's previous "
                                        f"chunk); send 'remaining_actions' instead")
            previous = None if sessions is None else sessions[i].previous_actions
            remaining = R.remaining_actions(request, previous)
            rows.append({"delay": request.delay, "remaining": remaining})
        return plain, rows

    def _inpainting(self, rows, horizon, dim) -> Inpainting | None:
        """Guidance for the rows that ask for it (weights 0 elsewhere); None when no row does."""
        active = [r is not None and r["remaining"] is not None and r["delay"] > 0 for r in rows]
        if not any(active):
            return None
        target = np.zeros((len(rows), horizon, dim), dtype=np.float32)
        weights = np.zeros((len(rows), horizon), dtype=np.float32)
        port = self._norm_port.get(self._action_output)
        for i, (row, on) in enumerate(zip(rows, active)):
            if not on:
                continue
            remaining = row["remaining"][:horizon]
            if port is not None:
                remaining = self._unnormalize.normalize_array(self._action_output, remaining)
            target[i, :len(remaining)] = remaining
            weights[i] = R.guidance_weights(horizon, row["delay"], len(remaining), self.rtc.schedule)
        return Inpainting(torch.from_numpy(target).to(self.device), torch.from_numpy(weights).to(self.device),
                          float(self.rtc.max_guidance))

    def _finish_rtc(self, outs, rows) -> None:
        """Blend the rows of a head that does not sample; say per row what was done."""
        name = self._action_output
        for out, row in zip(outs, rows):
            if row is None:
                continue
            remaining, delay = row["remaining"], row["delay"]
            applied = remaining is not None and delay > 0
            if applied and not self._guided:
                out[name] = R.blend_prefix(out[name], remaining, delay)
            out["rtc"] = {"applied": bool(applied), "method": self._rtc_method,
                          "delay": int(delay), "overlap": 0 if remaining is None else int(len(remaining))}

    def draw_noise(self, batch: int, generators=None) -> torch.Tensor:
        """The sampling head's starting noise for a batch: row i from generators[i] (one session's
        generator per row), or all rows from torch's global generator (None), on the policy's device,
        as the head draws it (its draw_noise, blocks/heads/noise.py)."""
        return self.cg.model[self.cg.block(self._samplers[0]).owner].draw_noise(batch, generators, self.device)

    def _session_forward(self, observations, sessions, computed, options, rows=None) -> list[dict]:
        """One forward pass with per-session caches and generators; the sessions advance only
        when it succeeds."""
        generator_states = [s.generator.get_state() for s in sessions]
        caches = [dict(s.caches) for s in sessions]
        frames = [dict(getattr(s, "window", None) or {}) for s in sessions]
        try:
            if self.samples and "noise" not in options:
                options = {**options, "noise": self.draw_noise(len(observations), [s.generator for s in sessions])}
            with self._rows.use(caches, computed):
                outs = self._forward(observations, options, rows, frames)
        except BaseException:
            for s, state in zip(sessions, generator_states):
                s.generator.set_state(state)
            raise
        self._ensemble_rows(outs, sessions)
        for s, c, f, out in zip(sessions, caches, frames, outs):
            s.caches = c
            s.window = f
            s.steps += 1
            if self._action_output in out:  # what a later request's `executed` refers to
                s.previous_actions = np.array(out[self._action_output], dtype=np.float32)
        return outs

    def set_temporal_ensemble(self, coeff: float) -> None:
        """Serve with temporal ensembling (serve.temporal_ensemble) whatever the graph's infer section says;
        sessions made before start over."""
        self.temporal_ensemble = checked_coeff(coeff, self.metadata["action_horizon"])
        self._ensembles = {}

    def _new_ensemble(self) -> TemporalEnsemble:
        return TemporalEnsemble(self.temporal_ensemble, int(self.metadata["action_horizon"]))

    def _ensemble_rows(self, outs: list, sessions=None) -> list:
        """Temporal ensembling (policy/ensemble.py): each row continues its session's ensemble, or
        without sessions row i the policy's own ensemble i."""
        if self.temporal_ensemble is not None:
            fold_rows(outs, self._action_output, sessions, self._ensembles, self._new_ensemble)
        return outs

    def _forward(self, observations: list, options: dict, rows=None, frames=None) -> list[dict]:
        """frames: per row, its observation window (port -> frames), updated in place (observation_window)."""
        batch = {}
        windowed = {} if self.window is None else self.window.ports
        for port, decl in self.inputs.items():
            decl = windowed.get(port, decl)
            present = [port in o and o[port] is not None for o in observations]
            if not any(present) and port in self.optional:
                continue
            if not all(present):
                i = present.index(False)
                raise ValueError(f"observation {i} lacks '{port}' (expected {describe(decl)})")
            values = [convert(port, decl, o[port]) for o in observations]
            if port in windowed:
                frames = frames if frames is not None else [{} for _ in observations]
                values = [self.window.push(port, v, f) for v, f in zip(values, frames)]
            batch[port] = values if decl["kind"] == "text" else torch.stack(values).to(self.device)
        batch = self.preprocess(batch)  # normalization, then the blocks' processor steps
        # the graph's arguments: a step's NODE.PORT is NODE_PORT; raw inputs only steps read are left out
        batch = {graph_argument(k): v for k, v in batch.items() if graph_argument(k) in self._arguments}
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        rows = rows or [None] * len(observations)
        if self._guided and any(r is not None for r in rows):
            meta = self.metadata
            guidance = self._inpainting(rows, meta["action_horizon"], meta["action_dim"])
            if guidance is not None:
                options = {**options, "rtc": guidance}
        if self.samples and "noise" not in options:  # no session: torch's global generator
            options = {**options, "noise": self.draw_noise(len(observations), None)}
        result = self._infer(**batch, **options)
        per_output = self.postprocess(dict(result))  # un-normalization of the action outputs
        outs = [{name: _item(value, i) for name, value in per_output.items()} for i in range(len(observations))]
        self._finish_rtc(outs, rows)
        return outs


def _item(value, i):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value[i].float().numpy() if value.is_floating_point() else value[i].numpy()
    if isinstance(value, np.ndarray):
        return value[i].astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value[i]
    if isinstance(value, (list, tuple)):
        return value[i]
    return value
