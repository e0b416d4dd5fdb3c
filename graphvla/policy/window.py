"""Observation windows (`infer.observation_window: N`): the policy, not the client, keeps the last N
observations, as LeRobot's policies keep theirs in queues (n_obs_steps). A client sends one frame per
step, as it would to LeRobot's select_action; each session (and each row of calls without sessions)
holds its frames, and the graph receives the window, oldest first. After a reset the first frame
fills the whole window (LeRobot's populate_queues).

The windowed ports are read from the graph's inputs: a state port with `history: N` (one frame:
[dim]) and an image port whose views are cameras x N, camera-major (one frame: [cameras, ...]; the
window's view c * N + s is camera c at step s). The served metadata lists the per-frame ports and
`observation_window: {steps, ports}`; an export keeps the same window (runners/exported.py)."""
from __future__ import annotations

import torch


class ObservationWindow:
    def __init__(self, steps: int, frame_inputs: dict):
        """steps: N; frame_inputs: windowed port -> its per-frame declaration."""
        self.steps = int(steps)
        self.ports = {p: dict(d) for p, d in frame_inputs.items()}

    @classmethod
    def for_graph(cls, steps: int, inputs: dict) -> "ObservationWindow | None":
        """The window of a graph whose inputs (port -> declaration) are `inputs`; None for steps 1. A
        graph with no port the window fits is a ValueError naming infer.observation_window."""
        if int(steps) <= 1:
            return None
        frames = {}
        for port, decl in inputs.items():
            if decl.get("kind") == "state" and int(decl.get("history", 1)) == steps:
                frames[port] = {**decl, "history": 1}
            elif decl.get("kind") == "image" and int(decl.get("views", 1)) % steps == 0:
                frames[port] = {**decl, "views": int(decl.get("views", 1)) // steps}
        if not frames:
            raise ValueError(f"infer.observation_window: {steps}: no input holds {steps} steps (a state with "
                             f"history: {steps}, or images whose views are cameras x {steps})")
        return cls(steps, frames)

    @classmethod
    def from_metadata(cls, meta: dict) -> "ObservationWindow | None":
        """The window a served policy's metadata describes (an export's manifest), or None."""
        window = meta.get("observation_window")
        if not window:
            return None
        return cls(window["steps"], {p: meta["inputs"][p] for p in window["ports"]})

    def describe(self) -> dict:
        return {"steps": self.steps, "ports": sorted(self.ports)}

    def client_inputs(self, inputs: dict) -> dict:
        """What a client sends: the graph's inputs with the windowed ports per frame."""
        return {p: dict(self.ports.get(p, d)) for p, d in inputs.items()}

    def push(self, port: str, frame: torch.Tensor, frames: dict) -> torch.Tensor:
        """Add `frame` (the converted value of one observation) to `frames[port]` (a row's window, a
        new list each time so a copy of `frames` is untouched) and return the window as the graph takes it."""
        old = frames.get(port)
        new = [frame] * self.steps if not old else (list(old) + [frame])[-self.steps:]
        frames[port] = new
        if self.ports[port]["kind"] == "state":
            return torch.stack(new)  # [steps, dim]
        x = torch.stack(new, dim=1)  # [cameras, steps, C, H, W]
        return x.reshape(-1, *x.shape[2:])
