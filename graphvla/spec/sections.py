"""Schemas of the optional top-level sections that runners read (trainer, serve, infer).

They live beside the spec schema so that every key of a spec is checked in one place; the
runners read the validated values (defaults filled with `section_defaults`)."""
from __future__ import annotations

from ..blocks.base import with_defaults

TRAINER = {
    "type": "object",
    "description": "Training options read by `graphvla train` (override with --set trainer.KEY=VALUE).",
    "properties": {
        "max_steps": {"type": "integer", "minimum": 1, "default": 1000},
        "batch_size": {"type": "integer", "minimum": 1, "default": 32},
        "lr": {"type": "number", "exclusiveMinimum": 0, "default": 3.0e-4, "description": "learning rate of blocks without train.lr"},
        "weight_decay": {"type": "number", "minimum": 0, "default": 0.01},
        "betas": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "default": [0.9, 0.95]},
        "warmup_steps": {"type": "integer", "minimum": 0, "default": 100},
        "min_lr_ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1, "description": "cosine floor as a fraction of the peak"},
        "grad_clip": {"type": "number", "minimum": 0, "default": 1.0, "description": "max gradient norm (0 disables)"},
        "fused_optimizer": {"type": "boolean", "default": False,
                            "description": "AdamW's fused kernel: several times faster steps on large models (CPU "
                                           "included); equal to the default per-tensor loop up to rounding"},
        "precision": {"enum": ["auto", "fp32", "bf16"], "default": "auto", "description": "auto: bf16 autocast where the hardware has it"},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "log_every": {"type": "integer", "minimum": 1, "default": 10},
        "save_every": {"type": "integer", "minimum": 1, "default": 500},
        "keep_last": {"type": "integer", "minimum": 1, "default": 2, "description": "checkpoints kept on disk"},
        "base_weights": {"enum": ["copy", "reference"], "default": "copy",
                         "description": "reference: model.safetensors leaves out the frozen weights of a block whose "
                                        "base weight files the checkpoint references (assets.json), and load_policy "
                                        "reads them from those files, checked by sha256"},
        "num_workers": {"type": "integer", "minimum": 0, "default": 0},
        "streams": {
            "type": "object",
            "description": "co-training: stream name -> how often it is stepped relative to the others",
            "additionalProperties": {
                "type": "object",
                "properties": {"ratio": {"type": "integer", "minimum": 1, "default": 1}, "batch_size": {"type": "integer", "minimum": 1}},
                "additionalProperties": False,
            },
        },
        "normalization": {
            "type": "object",
            "description": "input/target port -> normalization mode",
            "additionalProperties": {"enum": ["mean_std", "min_max", "q01_q99", "identity"]},
        },
    },
    "additionalProperties": False,
}

SERVE = {
    "type": "object",
    "description": "Options read by `graphvla serve`.",
    "properties": {
        "key_map": {
            "type": "object",
            "description": "observation key sent by the client -> input port ('port', or 'port[i]' for view i of an "
                           "image port; null accepts and drops the key). Unmapped ports keep their own name.",
            "additionalProperties": {"type": ["string", "null"]},
        },
        "execute_steps": {"type": "integer", "minimum": 1,
                          "description": "how many actions of each predicted chunk a client executes before it queries "
                                         "again (sent in the server metadata; `graphvla eval` follows it unless --execute "
                                         "is given; default: the benchmark adapter's)"},
        "max_batch": {"type": "integer", "minimum": 1, "default": 8,
                      "description": "most concurrent requests run as one batched forward (1 disables batching)"},
        "max_wait_ms": {"type": "number", "minimum": 0, "default": 2.0,
                        "description": "how long a batch waits for more requests (never when every connected client is already in it)"},
        "max_message_mb": {"type": "number", "exclusiveMinimum": 0, "default": 64,
                           "description": "largest request accepted; a bigger one closes that connection (code 1009)"},
        "temporal_ensemble": {"type": ["number", "null"], "default": None,
                              "description": "serve with ACT's temporal ensembling at this coefficient (LeRobot's "
                                             "temporal_ensemble_coeff; policy/ensemble.py) whatever the graph's "
                                             "infer.temporal_ensemble says; execute_steps then defaults to 1"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2 ** 64 - 1, "default": 0,
                 "description": "seed of every client session's noise generator (a client may mix in its own "
                                "session_seed with a reset request); the same seed and observations replay the same actions"},
    },
    "additionalProperties": False,
}

INFER = {
    "type": "object",
    "description": "Inference options of the whole graph, read by the policy (runners/policy.py).",
    "properties": {
        "rtc": {
            "type": "object",
            "description": "real-time chunking: a request may send the actions of its previous chunk that have not run "
                           "yet and the inference delay d; flow heads inpaint the new chunk from them (guided sampling), "
                           "other heads take the first d actions from them and blend over the rest of the overlap",
            "properties": {
                "enabled": {"type": "boolean", "default": True, "description": "false: requests asking for it are refused"},
                "max_guidance": {"type": "number", "exclusiveMinimum": 0, "default": 5.0,
                                 "description": "beta, the clip of the guidance weight (flow heads)"},
                "schedule": {"enum": ["exp", "linear", "ones", "hard"], "default": "exp",
                             "description": "weights over the overlap after the first d steps (which weigh 1): exp and "
                                            "linear decay to 0 at its end, ones keeps 1, hard is 0 (only the first d)"},
                "max_delay": {"type": ["integer", "null"], "minimum": 0, "default": None,
                              "description": "largest delay d a request may ask for (default: horizon - 1)"},
            },
            "additionalProperties": False,
        },
        "observation_window": {
            "type": "integer", "minimum": 1, "default": 1,
            "description": "N > 1: the policy keeps each session's last N observations (LeRobot's n_obs_steps "
                           "queues, policy/window.py): a client sends one frame per step; state ports with "
                           "history N and image ports with cameras x N views (camera-major) get the window"},
        "temporal_ensemble": {
            "type": "object",
            "description": "ACT's temporal ensembling (policy/ensemble.py): each session's executed action is the "
                           "exp(-coeff * i)-weighted mean of every chunk's prediction for that step (i = 0 the "
                           "oldest); the policy is queried every step (serve.execute_steps defaults to 1)",
            "properties": {"coeff": {"type": "number", "description": "LeRobot's temporal_ensemble_coeff (ACT: 0.01)"}},
            "required": ["coeff"],
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

SECTIONS = {"trainer": TRAINER, "serve": SERVE, "infer": INFER}


def section_defaults(name: str, values: dict | None) -> dict:
    return with_defaults(SECTIONS[name], values)
