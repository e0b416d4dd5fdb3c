"""`glue.state_text`: write the (normalized) robot state into the prompt as text, as pi0-FAST does.
In training it writes the prompts in the DataLoader workers (`StatePromptEncoder`), where a VLM's
encoder downstream reads them (blocks/prepared.py)."""
from __future__ import annotations

import torch

from ..base import Block, InPort, OutPort, ParamError
from ..prepared import BatchEncoder, Prepared
from ..registry import register


def state_prompts(params: dict, text, state: torch.Tensor) -> list[str]:
    """The instruction of each sample with its state written as integer bins (the last step of a history)."""
    if len(text) != state.shape[0]:
        raise ValueError(f"{len(text)} instructions for a batch of {state.shape[0]} states")
    if state.dim() == 3:
        state = state[:, -1]
    unit = (state.float().clamp(params["low"], params["high"]) - params["low"]) / (params["high"] - params["low"])
    rows = (unit * params["bins"]).long().clamp(max=params["bins"] - 1).tolist()
    return [params["template"].format(text=t, state=" ".join(map(str, r))) for t, r in zip(text, rows)]


class StatePromptEncoder(BatchEncoder):
    """glue.state_text in a DataLoader worker: the prompts of the batch (its normalized state)."""

    reads, tie, outputs = ("text", "state"), "text", ("text",)

    def __init__(self, params: dict):
        self.params = dict(params)

    def __call__(self, text, state) -> dict:
        return {"text": state_prompts(self.params, text, state)}


@register
class StateText(Prepared, Block):
    """pi0-FAST's way of giving an LM the robot state: each (normalized) state value is clipped to
    [low, high], cut into `bins` equal bins and written as the bin's integer in the prompt."""

    type_name = "glue.state_text"
    description = "Instruction + state -> one prompt with the state discretized into integer bins (pi0-FAST)."
    in_ports = {
        "text": InPort("text", doc="instruction"),
        "state": InPort("state", ndim=(2, 3), doc="[B, D] (or [B, history, D]: the last step is used), normalized"),
    }
    out_ports = {"text": OutPort("text", doc="the prompt with the state in it")}
    params_schema = {
        "type": "object",
        "properties": {
            "bins": {"type": "integer", "minimum": 2, "default": 256},
            "low": {"type": "number", "default": -1.0, "description": "values below are clipped (normalized units)"},
            "high": {"type": "number", "default": 1.0, "description": "values above are clipped (normalized units)"},
            "template": {"type": "string", "default": "{text}, State: {state};",
                         "description": "Python format string with {text} and {state}"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("state", (2, 3))
        p = self.params
        if p["high"] <= p["low"]:
            raise ParamError("high", f"must be above with.low ({p['low']}), got {p['high']}")
        try:
            p["template"].format(text="", state="")
        except (KeyError, IndexError, ValueError) as e:
            raise ParamError("template", f"{p['template']!r} is not a format string with only {{text}} and {{state}}: {e}") from None
        for field in ("{text}", "{state}"):
            if field not in p["template"]:
                raise ParamError("template", f"{p['template']!r} has no {field}")

    def forward(self, text, state):
        prepared = self.take_prepared(text)  # the very list a worker wrote, which the VLM's own encoding is tied to
        return {"text": prepared["text"] if prepared is not None else state_prompts(self.params, text, state)}

    def batch_encoder(self):
        return StatePromptEncoder(self.params)

    def meta_forward(self, text, state):
        width = len(str(self.params["bins"] - 1))
        placeholder = " ".join(["0" * width] * state.shape[-1])  # the longest prompt: every bin at full width
        return {"text": [self.params["template"].format(text=t, state=placeholder) for t in text]}
