"""`glue.state_text`: write the (normalized) robot state into the prompt as text, as pi0-FAST does.
The prompts are written by its processor step (processors/text.py StatePrompt) in the
preprocess pipeline, where a VLM's step downstream reads them (as `NODE.text`); the block passes
them on in the graph."""
from __future__ import annotations

import torch

from ...processors.block import bind
from ...processors.text import StatePrompt, state_prompts  # noqa: F401 - state_prompts: its home moved
from ..base import Block, InPort, OutPort, ParamError, StepPorts
from ..registry import register


@register
class StateText(Block):
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

    def step_ports(self, wired):
        return StepPorts(("text", "state"), {"text": OutPort("text", doc="the prompts")})

    def processor_step(self, node=None, sources=None):
        return bind(StatePrompt, self, node, sources, ("text", "state"), ("text",), self.params)

    def forward(self, text):
        return {"text": text}  # written by the step: the graph passes them on to the blocks that read them

    def meta_forward(self, text, state):
        width = len(str(self.params["bins"] - 1))
        placeholder = " ".join(["0" * width] * state.shape[-1])  # the longest prompt: every bin at full width
        return {"text": [self.params["template"].format(text=t, state=placeholder) for t in text]}
