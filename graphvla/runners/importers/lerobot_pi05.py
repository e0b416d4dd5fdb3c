"""pi0.5 for `graphvla import lerobot` (runners/importers/lerobot.py's POLICIES table): LeRobot 0.4's pi05
(the port of openpi's PyTorch pi0.5; its saves hold policy_preprocessor.json / policy_postprocessor.json)
becomes the graph lerobot/pi05 (glue.state_text + backbone.paligemma + head.pi05).

Read as pi0's import reads its save (lerobot_pi0.py: sizes from the tensors, LeRobot's attention of 8
query heads and 1 key-value head, the tokenizer step read and not run, relative actions refused when
enabled, empty cameras left out), with pi0.5's differences:
- tensors: the expert's norms are adaptive (`input_layernorm.dense`, `post_attention_layernorm.dense`,
  `norm.dense`, under head.layers.N / head.norm), the time MLP is `time_mlp_in` / `time_mlp_out` (openpi's
  names; `action_time_mlp_*`, pi0's, are read as them, as LeRobot's loader does); there is no state_proj
  (a save holding one is refused by that name, where LeRobot would drop it with a warning);
- the preprocessor's pi05_prepare_state_tokenizer_processor_step writes the normalized state into the
  prompt. When the tokenizer step's tokenizer is on this machine, the run does the same (glue.state_text,
  padded to config.json's max_state_dim: the step's own saved config is empty, so a LeRobot that reloads
  the processor files pads to its default 32; the two agree at pi0.5's default max_state_dim 32) and
  takes LeRobot's `task` and `observation.state`. Otherwise the client runs LeRobot's preprocessor and
  sends its tokens (observation.language.tokens / attention_mask, served under those names: the state
  is in them, so the run takes no state);
- no newline is appended before tokenizing (pi0's pi0_new_line_processor is not in a pi05 pipeline);
- the state is required (LeRobot's pi05 refuses a batch without it).
"""
from __future__ import annotations

from . import lerobot_pi0 as pi0
from .checkpoint_keys import by_rules

P = pi0.P
EXPERT_LM_HEAD = pi0.EXPERT_LM_HEAD
RULES = (
    *[r for r in pi0.RULES if not r[0].startswith("model.time_mlp_") and r[0] != "model."],
    ("model.action_time_mlp_in.", "head.time_mlp_in."),
    ("model.action_time_mlp_out.", "head.time_mlp_out."),
    ("model.", "head."),
)


def importer_key(key: str) -> str | None:
    """LeRobot key -> graph key; None for the expert's unused lm_head; '' for an unknown key."""
    if not key.startswith("model."):
        key = "model." + key
    if key == EXPERT_LM_HEAD:
        return None
    if key.startswith("model.state_proj."):  # pi0's state projection: no place in pi0.5 (refused by name)
        return ""
    return by_rules(key, RULES)


fixed = pi0.fixed


def configure(spec: dict, cfg: dict, features: dict, folder, steps: list) -> dict:
    """Sizes and options of a LeRobot 0.4 pi05 save into the lerobot/pi05 spec; returns the served key map.
    ValueError names what cannot be imported."""
    if not features["state"]:
        raise ValueError("input_features: pi0.5 needs observation.state (LeRobot's pi05 writes it into the prompt)")
    key_map = pi0.configure(spec, cfg, features, folder, steps)
    head = spec["blocks"]["head"]["with"]
    head.pop("max_state_dim", None)
    spec["blocks"]["head"]["in"].pop("state", None)
    bb = spec["blocks"]["backbone"]
    if "tokens" in spec["inputs"]:  # the client tokenizes: its tokens hold the state
        spec["blocks"].pop("prompt", None)
        spec["inputs"].pop("state", None)
        spec["trainer"]["normalization"].pop("state", None)
        key_map.pop("observation.state", None)
        name = (pi0.tokenizer_of(steps) or {}).get("tokenizer_name", "google/paligemma-3b-pt-224")
        spec["inputs"]["tokens"]["description"] = (
            f"{pi0.TOKENS_KEY}: what LeRobot's pi05 preprocessor makes (its prompt 'Task: ..., State: ...;\\nAction: ' "
            f"with the normalized state in 256 bins, tokenized with {name}, right-padded to "
            f"{spec['inputs']['tokens']['shape'][0]}); {pi0.TOKENS_MASK_KEY} its attention mask")
    else:  # the run writes the prompt and tokenizes it itself
        bb["in"]["text"] = "prompt.text"
        bb["with"]["newline"] = False
        spec["blocks"]["prompt"]["with"]["pad_to"] = int(cfg["max_state_dim"])
    return key_map


fixed_tables = pi0.fixed_tables  # the expert's unused LM head, checked by shape as for pi0
