"""The JSON schema of a graph spec. `spec_schema()` includes every registered block's `with:`
schema (through if/then on `type`) so editors can autocomplete; `graphvla schema` prints it."""
from __future__ import annotations

import copy

from . import sections

SPEC_VERSION = 1
IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
REF = r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$"  # 'inputs.images' or 'block.port'

INPUT_KINDS = ["image", "text", "state", "action", "mask", "tokens"]

# Which fields each input kind takes, and which of them are required.
INPUT_FIELDS = {
    "image": ({"views", "size", "channels"}, {"size"}),
    "text": ({"max_length"}, set()),
    "state": ({"dim", "history", "privileged"}, {"dim"}),
    "action": ({"dim", "horizon", "hold"}, {"dim", "horizon"}),
    "mask": ({"shape"}, {"shape"}),
    "tokens": ({"shape", "vocab"}, {"shape"}),
}
COMMON_INPUT_FIELDS = {"kind", "optional", "train_only", "description"}

# Dataset keys that hold simulator state no robot has. Only a state port declared
# `privileged: true` may read them (data/frames.py refuses the rest); a graph with such a port is
# named *-privileged.yaml and its results are labelled "privileged upper bound".
PRIVILEGED_DATA_KEYS = frozenset({"observation.environment_state"})

_pos_int = {"type": "integer", "minimum": 1}

INPUT_PORT = {
    "type": "object",
    "description": "A typed input port of the policy (an observation, the instruction, a target).",
    "properties": {
        "kind": {"enum": INPUT_KINDS, "description": "what flows in"},
        "views": {**_pos_int, "default": 1, "description": "image: number of camera views"},
        "size": {"type": "array", "items": _pos_int, "minItems": 2, "maxItems": 2, "description": "image: [height, width]"},
        "channels": {**_pos_int, "default": 3, "description": "image: channels"},
        "dim": {**_pos_int, "description": "state/action: width"},
        "history": {**_pos_int, "default": 1, "description": "state: number of past steps (>1 adds an axis)"},
        "privileged": {"type": "boolean", "default": False,
                       "description": "state: reads simulator state no robot has (e.g. Meta-World's "
                                      "observation.environment_state); results of the graph are labelled "
                                      "privileged upper bound. Name such a graph *-privileged.yaml"},
        "horizon": {**_pos_int, "description": "action: chunk length"},
        "hold": {"type": "array", "items": {"type": "number"}, "minItems": 1,
                 "description": "action: the action that holds the robot still, in the dataset's (unnormalized) units, "
                                "one value per dim; a FAST decode that fails returns it for the whole chunk "
                                "(default: zeros, which is no motion for delta actions such as Meta-World's)"},
        "shape": {"type": "array", "items": _pos_int, "minItems": 1, "description": "mask/tokens: shape without the batch axis"},
        "vocab": {**_pos_int, "description": "tokens: vocabulary size"},
        "max_length": {**_pos_int, "description": "text: maximum length in characters"},
        "optional": {"type": "boolean", "default": False, "description": "may be absent in a batch (passed as None)"},
        "train_only": {"type": "boolean", "default": False, "description": "only given in training (targets)"},
        "description": {"type": "string"},
    },
    "required": ["kind"],
    "additionalProperties": False,
}

TRAIN_SECTION = {
    "type": "object",
    "description": "Per-block training options.",
    "properties": {
        "lr": {"type": "number", "exclusiveMinimum": 0, "description": "learning rate of this block's parameters"},
        "freeze": {"type": "boolean", "default": False, "description": "keep this block's parameters fixed"},
        "weight_decay": {"type": "number", "minimum": 0},
        "lora": {
            "type": "object",
            "description": "train LoRA adapters (peft) instead of the block's weights, which are frozen; serving merges "
                           "them (graphvla/blocks/lora.py)",
            "properties": {
                "r": {"type": "integer", "minimum": 1, "description": "rank of the adapters (required)"},
                "alpha": {"type": "number", "exclusiveMinimum": 0, "description": "scale alpha / r of the update (default 2 * r)"},
                "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1,
                            "description": "dropout on the adapters' input (default 0.05)"},
                "target_modules": {"oneOf": [{"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                                             {"type": "string", "minLength": 1}],
                                   "description": "module name suffixes, or a regular expression on full names (default: "
                                                  "the LM's attention/MLP projections for backbone.hf_vlm, every Linear "
                                                  "otherwise)"},
            },
            "required": ["r"],
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

INFER_SECTION = {
    "type": "object",
    "description": "Inference options of a block.",
    "properties": {
        "every": {"type": "integer", "minimum": 1, "default": 1,
                  "description": "recompute this block's outputs only every k inference calls and reuse them in between "
                                 "(dual-system: a slow System 2); kept by the Policy, whose reset() starts over"},
    },
    "additionalProperties": False,
}

BLOCK = {
    "type": "object",
    "description": "A block: `type` names a registered block; `share` reuses another block's module (same weights) with other inputs.",
    "properties": {
        "type": {"type": "string", "description": "registered block type, e.g. head.query_transformer (see `graphvla blocks`)"},
        "share": {"type": "string", "pattern": IDENT, "description": "id of a block whose module (weights) this node calls"},
        "in": {
            "type": "object",
            "description": "port -> source ('inputs.NAME' or 'BLOCK.PORT')",
            "additionalProperties": {"type": "string", "pattern": REF},
        },
        "with": {"type": "object", "description": "parameters of the block type"},
        "train": TRAIN_SECTION,
        "infer": INFER_SECTION,
        "description": {"type": "string"},
    },
    "additionalProperties": False,
}

LOSS = {
    "type": "object",
    "properties": {
        "from": {"type": "string", "pattern": REF, "description": "a loss port, 'BLOCK.PORT'"},
        "weight": {"type": "number", "minimum": 0, "default": 1.0},
        "stream": {"type": "string", "pattern": IDENT, "default": "action", "description": "training stream (data source) this loss belongs to"},
    },
    "required": ["from"],
    "additionalProperties": False,
}


def privileged_ports(spec) -> list[str]:
    """The input ports declared `privileged: true`, in declaration order. spec: a loaded `Spec`
    or a spec mapping."""
    inputs = spec.get("inputs") if isinstance(spec, dict) else spec.inputs
    return [name for name, decl in (inputs or {}).items() if isinstance(decl, dict) and decl.get("privileged") is True]


def base_schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "GraphVLA graph spec",
        "type": "object",
        "properties": {
            "graphvla": {"type": "integer", "description": f"spec format version (current: {SPEC_VERSION})"},
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "extends": {
                "description": "base spec(s) merged under this one (maps deep-merge, lists replace, null removes a block/input/loss/output)",
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            },
            "inputs": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": IDENT}, "additionalProperties": INPUT_PORT},
            "blocks": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": IDENT}, "additionalProperties": BLOCK},
            "losses": {"type": "object", "propertyNames": {"pattern": IDENT}, "additionalProperties": LOSS},
            "outputs": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": IDENT},
                "additionalProperties": {"type": "string", "pattern": REF},
            },
            **{name: copy.deepcopy(s) for name, s in sections.SECTIONS.items()},
        },
        "required": ["graphvla", "name", "inputs", "blocks", "outputs"],
        "additionalProperties": False,
    }


def spec_schema(block_types: dict | None = None) -> dict:
    """The whole schema, with each registered block's `with:` schema selected by `type`."""
    if block_types is None:
        from ..blocks.registry import registered

        block_types = registered(aliases=True)
    schema = base_schema()
    block = schema["properties"]["blocks"]["additionalProperties"]
    block["properties"]["type"]["enum"] = sorted(block_types)
    block["allOf"] = [
        {
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"properties": {"with": cls.params_schema}},
        }
        for name, cls in sorted(block_types.items())
    ]
    return schema
