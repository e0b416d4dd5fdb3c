"""SmolVLA for `graphvla import lerobot` (runners/importers/lerobot.py's POLICIES table): a SmolVLAPolicy
saved by LeRobot becomes the graph lerobot/smolvla (backbone.smolvla_vlm + head.smolvla_expert).

- The VLM: config.json's vlm_model_name (a folder or a Hub id, e.g.
  HuggingFaceTB/SmolVLM2-500M-Video-Instruct) gives the SmolVLM config, written into the run's spec
  as a dict (the run needs no VLM folder afterwards), and the tokenizer: the preprocessor's
  tokenizer_processor.tokenizer_name (0.4+ saves) or vlm_model_name (0.3.x), saved with the run's
  processor step.
- Sizes: num_vlm_layers, max_state_dim / max_action_dim, resize_imgs_with_padding (a square),
  tokenizer_max_length, self_attn_every_n_layers, attention_mode, num_steps, min/max_period from the
  config; the expert's width, MLP width and layer count from its tensors.
- Tensors: LeRobot's names under model.vlm_with_expert.vlm.model (vision_model, connector,
  text_model.embed_tokens, text_model.layers) and model.state_proj -> backbone; lm_expert and
  model.action_* -> head. The VLM's lm_head and final text norm are never read by SmolVLA: accounted
  for by name and shape, not loaded.
- The instruction is served under LeRobot's key `task` and tokenized by the backbone's step as
  LeRobot's smolvla_new_line_processor + tokenizer_processor do (0.4+), or as the 0.3.x policy's own
  prepare_language does (no truncation to tokenizer_max_length: a 0.3.x save without processor files).
- SigLIP's patch positions differ across transformers versions (backbone.smolvla_vlm's
  patch_positions): a 0.3.x save gets 4.51's (`index`, what LeRobot 0.3.x pins), a 0.4+ save 4.57's
  (`shifted`, what LeRobot 0.4 installs); `graphvla import lerobot --patch-positions index` for a LeRobot 0.5.x
  save (transformers 5), whose files are 0.4.x's.
- Refused by name: add_image_special_tokens, adapt_to_pi_aloha, empty_cameras, prefix_length > 0,
  n_obs_steps != 1, a non-square resize, a VISUAL normalization other than IDENTITY, a tokenizer
  step that does not pad on the right to the longest.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .checkpoint_keys import by_rules, header_shapes
from .lerobot_pi0 import optimizer_settings, tokenizer_of

V = "model.vlm_with_expert.vlm."
E = "model.vlm_with_expert.lm_expert."
TASK_KEY = "task"
PRE_STEPS = ("smolvla_new_line_processor", "tokenizer_processor")
UNUSED = (V + "lm_head.weight", V + "model.text_model.norm.weight")
RULES = (
    (V + "model.vision_model.", "backbone.vision_model."),
    (V + "model.connector.", "backbone.connector."),
    (V + "model.text_model.embed_tokens.", "backbone.embed_tokens."),
    (V + "model.text_model.layers.", "backbone.layers."),
    ("model.state_proj.", "backbone.state_proj."),
    (E, "head."),
    ("model.action_", "head.action_"),
)


def importer_key(key: str) -> str | None:
    """LeRobot key -> graph key; None for the tensors SmolVLA never reads; '' for an unknown key."""
    if key in UNUSED:
        return None
    return by_rules(key, RULES)


def fixed(key: str, ours, theirs) -> None:
    if tuple(theirs.shape) != tuple(ours):
        raise ValueError(f"'{key}' has shape {list(theirs.shape)}, expected {list(ours)}")


def fixed_tables(cg) -> dict:
    bb = cg.model["backbone"]
    vocab, width = bb.embed_tokens.weight.shape
    return {UNUSED[0]: (vocab, width), UNUSED[1]: (width,)}


def _local(value: str, what: str) -> Path:
    from ... import hub

    path = Path(value)
    if path.exists():
        return path
    try:
        return hub.resolve(value, weights=False)
    except hub.HubError as e:
        raise ValueError(f"{what} '{value}': {e}") from None


def configure(spec: dict, cfg: dict, features: dict, folder: Path, steps: list) -> dict:
    """Sizes and options of a SmolVLA save (with its preprocessor's `steps`: the tokenizer step) into the
    lerobot/smolvla spec; returns the served key map. ValueError names what cannot be imported."""
    for key, ok in (("add_image_special_tokens", False), ("adapt_to_pi_aloha", False),
                    ("use_delta_joint_actions_aloha", False)):
        if bool(cfg.get(key, ok)) != ok:
            raise ValueError(f"{key} {cfg.get(key)} is not supported ({ok})")
    if cfg.get("empty_cameras"):
        raise ValueError(f"empty_cameras {cfg['empty_cameras']} is not supported (0)")
    if int(cfg.get("prefix_length", -1)) > 0:
        raise ValueError(f"prefix_length {cfg['prefix_length']} is not supported (-1: no prefix padding)")
    if int(cfg.get("n_obs_steps", 1)) != 1:
        raise ValueError(f"n_obs_steps {cfg['n_obs_steps']} is not supported (1)")
    if not features["cameras"]:
        raise ValueError("input_features: SmolVLA needs at least one camera")
    size = list(cfg.get("resize_imgs_with_padding") or [])
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"resize_imgs_with_padding {cfg.get('resize_imgs_with_padding')} is not supported (a square)")
    visual = (cfg.get("normalization_mapping") or {}).get("VISUAL", "IDENTITY")
    if visual != "IDENTITY":
        raise ValueError(f"normalization_mapping.VISUAL '{visual}' is not supported (IDENTITY: SmolVLA scales images itself)")
    mode = cfg.get("attention_mode", "cross_attn")
    if mode not in ("cross_attn", "self_attn"):
        raise ValueError(f"attention_mode '{mode}' is not supported (cross_attn, self_attn)")
    for key in ("max_state_dim", "max_action_dim", "chunk_size", "num_vlm_layers"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {cfg.get(key)!r}")
    if features["state"] > cfg["max_state_dim"] or features["action"] > cfg["max_action_dim"]:
        raise ValueError(f"max_state_dim {cfg['max_state_dim']} / max_action_dim {cfg['max_action_dim']} are smaller "
                         f"than the state ({features['state']}) / actions ({features['action']})")
    vlm_name = cfg.get("vlm_model_name") or "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    vlm_dir = _local(vlm_name, "vlm_model_name")
    try:
        vlm_config = json.loads((vlm_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"vlm_model_name '{vlm_name}': no readable config.json ({e})") from None
    length = int(cfg.get("tokenizer_max_length", 48))
    tok = tokenizer_of(steps)
    if tok is not None:
        if int(tok.get("max_length", length)) != length or tok.get("padding_side", "right") != "right" \
                or tok.get("padding", "longest") != "longest" or not tok.get("truncation", True):
            raise ValueError(f"policy_preprocessor.json: tokenizer_processor max_length {tok.get('max_length')}, padding "
                             f"'{tok.get('padding')}' on the '{tok.get('padding_side')}' (truncation "
                             f"{tok.get('truncation')}) differ from SmolVLA's: tokenizer_max_length {length}, the "
                             "longest on the right, truncated")
    tokenizer = str(_local((tok or {}).get("tokenizer_name") or vlm_name, "tokenizer_name"))

    shapes = header_shapes(folder / "model.safetensors")
    norm = shapes.get(E + "norm.weight")
    gate = shapes.get(E + "layers.0.mlp.gate_proj.weight")
    if norm is None or gate is None:
        raise ValueError(f"model.safetensors: no '{E}norm.weight' / '{E}layers.0.mlp.gate_proj.weight' (not a SmolVLA)")
    layers = {int(m.group(1)) for k in shapes for m in [re.match(re.escape(E) + r"layers\.(\d+)\.", k)] if m}
    text = vlm_config.get("text_config") or {}
    heads = int(text.get("num_attention_heads", 0) or 0)
    head_dim = int(text.get("head_dim", 0) or (int(text.get("hidden_size", 0)) // heads if heads else 0))
    if not heads or not head_dim:
        raise ValueError(f"vlm_model_name '{vlm_name}': config.json's text_config has no num_attention_heads / head_dim")

    spec["inputs"].pop("tokens", None)
    spec["inputs"].pop("tokens_mask", None)
    spec["inputs"]["text"] = {"kind": "text", "max_length": length,
                              "description": f"{TASK_KEY}: the instruction (a newline is appended; tokenizer of {vlm_name})"}
    spec["inputs"]["actions_mask"]["optional"] = True
    bb = spec["blocks"]["backbone"]
    bb["in"] = {"images": "inputs.images", "text": "inputs.text", "state": "inputs.state"}
    bb["with"] = {"config": vlm_config, "num_vlm_layers": cfg["num_vlm_layers"], "image_size": size[0],
                  "max_state_dim": cfg["max_state_dim"], "tokenizer": tokenizer, "max_length": length,
                  "truncate": tok is not None,  # LeRobot 0.3.2's policy tokenized without truncation
                  # the vision patch positions of the transformers each LeRobot installs: 0.3.x pins 4.51
                  # (index), 0.4 takes the newest 4.x, 4.57 (shifted)
                  "patch_positions": "shifted" if tok is not None else "index",
                  "train_vlm": not cfg.get("train_expert_only", True),
                  "train_vision": not cfg.get("freeze_vision_encoder", True)}
    if not features["state"]:
        raise ValueError("input_features: SmolVLA needs observation.state (its prefix holds a state token)")
    head = spec["blocks"]["head"]["with"]
    head.clear()
    head.update(width=int(norm[0]), ffn=int(gate[0]), heads=heads, head_dim=head_dim, layers=len(layers),
                self_attn_every=int(cfg.get("self_attn_every_n_layers", 2)), cross_attention=mode == "cross_attn",
                max_action_dim=cfg["max_action_dim"], num_steps=int(cfg.get("num_steps", 10)),
                min_period=float(cfg.get("min_period", 0.004)), max_period=float(cfg.get("max_period", 4.0)),
                rms_eps=float(text.get("rms_norm_eps", 1e-5)))
    optimizer_settings(spec["trainer"], cfg)
    key_map = {cam: f"images[{i}]" for i, cam in enumerate(features["cameras"])}
    key_map["observation.state"] = "state"
    key_map[TASK_KEY] = "text"
    return key_map
