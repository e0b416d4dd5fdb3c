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
    [low, high], cut into `bins` equal bins and written as the bin's integer in the prompt. pi0.5's
    (openpi / LeRobot's Pi05PrepareStateTokenizerProcessorStep): `pad_to` max_state_dim, `binning:
    digitize`, `clean_text`, template "Task: {text}, State: {state};\nAction: "."""

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
            "pad_to": {"type": "integer", "minimum": 0, "default": 0,
                       "description": "zero-pad the state to this many dims before binning (pi0.5: max_state_dim); 0: no padding"},
            "binning": {"enum": ["clip", "digitize"], "default": "clip",
                        "description": "clip: values clipped to [low, high] (pi0-FAST); digitize: numpy's digitize over "
                                       "the bins' left edges, a value below low written as -1 (pi0.5, openpi / LeRobot)"},
            "clean_text": {"type": "boolean", "default": False,
                           "description": "strip each instruction and write underscores and newlines as spaces (pi0.5)"},
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
        placeholder = " ".join(["0" * width] * max(state.shape[-1], self.params["pad_to"]))  # the longest prompt: every bin at full width
        return {"text": [self.params["template"].format(text=t, state=placeholder) for t in text]}
