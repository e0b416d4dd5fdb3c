"""pi0 for `graphvla import lerobot` (runners/importers/lerobot.py's POLICIES table): LeRobot 0.4's pi0
(the port of openpi's PyTorch model; its saves hold policy_preprocessor.json / policy_postprocessor.json)
becomes the graph lerobot/pi0 (backbone.paligemma + head.pi0).

- Sizes come from the tensors (LeRobot hard-wires them: paligemma_variant / action_expert_variant name
  gemma_2b / gemma_300m and PaliGemma's SigLIP so400m): widths, MLP widths, layer counts, vocabulary,
  patch size; attention as LeRobot computes it: 8 query heads and 1 key-value head (its reshape is
  1 * 8 * head_dim), SigLIP heads of 72 (so400m's 1152 / 16). image_resolution must be square.
- Tensors: LeRobot's names under model.paligemma_with_expert. mapped onto the blocks' (SigLIP,
  projector, Gemma layers and norm -> backbone; the expert's layers and norm, state / action / time
  projections -> head; openpi's time_mlp_in / time_mlp_out names read as action_time_mlp_*). PaliGemma's
  lm_head is its tied embedding table (LeRobot's save keeps that name); the expert's lm_head is a
  tensor pi0 never reads: accounted for by name and shape, not loaded.
- empty_cameras: LeRobot gives each an image of -1 whose tokens are masked out of every attention (and
  take no position), so they change nothing: the run leaves them out (lerobot.features_of), and a
  client sends the real cameras only.
- Newer LeRobot's relative_actions_processor step is read when disabled (a no-op) and refused when
  enabled (relative actions are not supported).
- A pi0 saved by LeRobot 0.3.x is refused by name: that port is a different model (bfloat16 wired into
  its activations, loss over the padded dims with action_is_pad, padding on one side when resizing).
- The preprocessor's pi0_new_line_processor and tokenizer_processor steps are read, not run: the
  tokens are the graph's inputs, so a client sends what LeRobot's tokenizer step makes
  (observation.language.tokens, observation.language.attention_mask; the task plus a newline through
  the step's tokenizer_name, right-padded to max_length), served under those LeRobot names. The step's
  tokenizer_name, max_length and padding are recorded in the run's spec (serve.tokenizer... see
  `tokenizer_of`).
"""
from __future__ import annotations

import re

from .checkpoint_keys import by_rules, header_shapes

TOKENS_KEY, TOKENS_MASK_KEY = "observation.language.tokens", "observation.language.attention_mask"
PRE_STEPS = ("pi0_new_line_processor", "tokenizer_processor")
P = "model.paligemma_with_expert."
EXPERT_LM_HEAD = P + "gemma_expert.lm_head.weight"
SIGLIP_HEAD_DIM = 72
RULES = (
    (P + "paligemma.model.vision_tower.vision_model.embeddings.", "backbone.vision."),
    (P + "paligemma.model.vision_tower.vision_model.encoder.", "backbone.vision."),
    (P + "paligemma.model.vision_tower.vision_model.", "backbone.vision."),
    (P + "paligemma.model.multi_modal_projector.linear.", "backbone.projector."),
    (P + "paligemma.lm_head.", "backbone.embed_tokens."),
    (P + "paligemma.model.language_model.embed_tokens.", "backbone.embed_tokens."),
    (P + "paligemma.model.language_model.", "backbone."),
    (P + "gemma_expert.model.", "head."),
    ("model.time_mlp_in.", "head.action_time_mlp_in."),
    ("model.time_mlp_out.", "head.action_time_mlp_out."),
    ("model.", "head."),
)


def importer_key(key: str) -> str | None:
    """LeRobot key -> graph key; None for the expert's unused lm_head; '' for an unknown key. Keys without
    LeRobot's `model.` prefix (openpi's conversions; LeRobot's from_pretrained adds it) are read with it."""
    if not key.startswith("model."):
        key = "model." + key
    if key == EXPERT_LM_HEAD:
        return None
    return by_rules(key, RULES)


def fixed(key: str, ours, theirs) -> None:
    """The expert's lm_head: never read by pi0; its shape must be [vocab, expert width]."""
    if tuple(theirs.shape) != tuple(ours):
        raise ValueError(f"'{key}' has shape {list(theirs.shape)}, expected {list(ours)} (vocabulary x expert width)")


def _count(state: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in state for m in [pat.match(k)] if m}
    return max(ids) + 1 if ids else 0


def optimizer_settings(tr: dict, cfg: dict) -> None:
    """The trainer section from a pi0/SmolVLA config's optimizer and scheduler presets (AdamW, cosine
    decay with warmup to scheduler_decay_lr); a field the config lacks keeps the graph's value."""
    tr["lr"] = float(cfg.get("optimizer_lr", tr["lr"]))
    tr["weight_decay"] = float(cfg.get("optimizer_weight_decay", tr["weight_decay"]))
    tr["betas"] = [float(b) for b in cfg.get("optimizer_betas", tr["betas"])]
    tr["grad_clip"] = float(cfg.get("optimizer_grad_clip_norm", tr["grad_clip"]))
    tr["warmup_steps"] = int(cfg.get("scheduler_warmup_steps", tr["warmup_steps"]))
    if tr["lr"]:
        tr["min_lr_ratio"] = float(cfg.get("scheduler_decay_lr", 2.5e-6)) / tr["lr"]


def shapes_of(weights_path) -> dict:
    """LeRobot key -> shape, read from the safetensors header (no tensor is loaded)."""
    return {(k if k.startswith("model.") else "model." + k): shape for k, shape in header_shapes(weights_path).items()}


def sizes_of(state: dict) -> dict:
    """The blocks' sizes read off LeRobot's tensor shapes (key -> shape; KeyError naming a missing tensor)."""
    v = P + "paligemma.model.vision_tower.vision_model."
    t = P + "paligemma.model.language_model."
    e = P + "gemma_expert.model."
    emb = state.get(P + "paligemma.lm_head.weight", state.get(t + "embed_tokens.weight"))
    if emb is None:
        raise KeyError(P + "paligemma.lm_head.weight")
    patch = state[v + "embeddings.patch_embedding.weight"]
    vw = int(patch[0])
    n_pos = int(state[v + "embeddings.position_embedding.weight"][0])
    side = int(round(n_pos ** 0.5))
    vision = {"width": vw, "layers": _count(state, v + "encoder.layers."),
              "mlp": int(state[v + "encoder.layers.0.mlp.fc1.weight"][0]),
              "heads": max(1, vw // SIGLIP_HEAD_DIM), "patch": int(patch[-1]), "image_size": side * int(patch[-1])}
    head_dim = int(state[t + "layers.0.self_attn.k_proj.weight"][0])  # one kv head
    text = {"width": int(emb[1]), "layers": _count(state, t + "layers."),
            "mlp": int(state[t + "layers.0.mlp.gate_proj.weight"][0]), "heads": 8, "kv_heads": 1,
            "head_dim": head_dim, "vocab": int(emb[0])}
    width = state[e + "norm.weight"][0] if e + "norm.weight" in state else state[e + "norm.dense.weight"][1]  # pi0.5: adaRMS
    expert = {"width": int(width), "layers": _count(state, e + "layers."),
              "mlp": int(state[e + "layers.0.mlp.gate_proj.weight"][0]), "heads": 8, "kv_heads": 1,
              "head_dim": head_dim}
    return {"vision": vision, "text": text, "expert": expert, "n_pos": n_pos, "side": side}


def tokenizer_of(steps: list) -> dict | None:
    """The tokenizer_processor config among the preprocessor's steps (lerobot.Preprocessor.steps, read once
    by the importer; [] for a save without processor files), or None: none there."""
    tok = [s.get("config") or {} for s in steps if s.get("registry_name") == "tokenizer_processor"]
    return tok[0] if tok else None


def local_tokenizer(name: str, folder):
    """The tokenizer step's tokenizer_name as a folder on this machine (a path, absolute or relative to the
    save, or a Hub id the Hugging Face cache holds), else None (nothing is downloaded)."""
    from pathlib import Path

    from ... import hub

    for path in (Path(name).expanduser(), Path(folder) / name):
        if path.is_dir() and (path / "tokenizer_config.json").is_file():
            return path.resolve()
    return hub.cached_snapshot(name)


def configure(spec: dict, cfg: dict, features: dict, folder, steps: list) -> dict:
    """Sizes and options of a LeRobot 0.4 pi0 save (config.json, the weights' shapes, the tokenizer step among
    the preprocessor's `steps`) into the lerobot/pi0 spec; returns the served key map. ValueError names what
    cannot be imported."""
    from pathlib import Path

    if "paligemma_variant" not in cfg or "resize_imgs_with_padding" in cfg:
        raise ValueError("a pi0 saved by LeRobot 0.3.x (its bfloat16 port, a different model from LeRobot 0.4's "
                         "openpi port) is not supported: save it with LeRobot >= 0.4")
    if int(cfg.get("n_obs_steps", 1)) != 1:
        raise ValueError(f"n_obs_steps {cfg['n_obs_steps']} is not supported (1)")
    if not features["cameras"]:
        raise ValueError("input_features: pi0 needs at least one camera")
    res = list(cfg.get("image_resolution") or [224, 224])
    if len(res) != 2 or res[0] != res[1]:
        raise ValueError(f"image_resolution {res} is not supported (a square)")
    visual = (cfg.get("normalization_mapping") or {}).get("VISUAL", "IDENTITY")
    if visual != "IDENTITY":
        raise ValueError(f"normalization_mapping.VISUAL '{visual}' is not supported (IDENTITY: pi0 scales images "
                         "to [-1, 1] itself)")
    s = sizes_of(shapes_of(Path(folder) / "model.safetensors"))
    if s["side"] ** 2 != s["n_pos"] or s["vision"]["image_size"] != res[0]:
        raise ValueError(f"image_resolution {res} does not fit the vision tower's {s['n_pos']} positions of "
                         f"{s['vision']['patch']}-pixel patches")
    if s["vision"]["width"] % SIGLIP_HEAD_DIM and s["vision"]["width"] > SIGLIP_HEAD_DIM:
        raise ValueError(f"a vision tower of width {s['vision']['width']} (not a multiple of SigLIP's head width "
                         f"{SIGLIP_HEAD_DIM})")
    for key in ("max_state_dim", "max_action_dim", "chunk_size"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {cfg.get(key)!r}")
    if features["state"] > cfg["max_state_dim"] or features["action"] > cfg["max_action_dim"]:
        raise ValueError(f"max_state_dim {cfg['max_state_dim']} / max_action_dim {cfg['max_action_dim']} are "
                         f"smaller than the state ({features['state']}) / actions ({features['action']})")
    length = int(cfg.get("tokenizer_max_length", 48))
    tok = tokenizer_of(steps)
    for step in steps:
        if step.get("registry_name") == "relative_actions_processor" and (step.get("config") or {}).get("enabled"):
            raise ValueError("policy_preprocessor.json: relative_actions_processor is enabled (relative actions, "
                             "newer LeRobot's use_relative_actions) and not supported; a disabled one is read as a no-op")
    if cfg.get("use_relative_actions"):
        raise ValueError("use_relative_actions true is not supported")
    if tok is not None:
        if int(tok.get("max_length", length)) != length or tok.get("padding_side", "right") != "right" \
                or tok.get("padding", "max_length") != "max_length":
            raise ValueError(f"policy_preprocessor.json: tokenizer_processor max_length {tok.get('max_length')} / "
                             f"padding '{tok.get('padding')}' on the '{tok.get('padding_side')}' differ from "
                             f"tokenizer_max_length {length}, 'max_length' padding on the right")
    name = (tok or {}).get("tokenizer_name", "google/paligemma-3b-pt-224")
    tokenizer = local_tokenizer(name, Path(folder))
    if tokenizer is None:  # the client tokenizes: LeRobot's tokenizer step's outputs are the inputs
        spec["inputs"].pop("instruction", None)
        spec["inputs"]["tokens"] = {"kind": "tokens", "shape": [length], "vocab": s["text"]["vocab"],
                                    "description": f"{TOKENS_KEY}: what LeRobot's tokenizer_processor makes (tokenizer "
                                                   f"{name}: the task plus a newline, right-padded to {length}); "
                                                   f"{TOKENS_MASK_KEY} its attention mask"}
        spec["inputs"]["tokens_mask"] = {"kind": "mask", "shape": [length]}
        bb_in = spec["blocks"]["backbone"]["in"]
        bb_in.pop("text", None)
        bb_in.update(tokens="inputs.tokens", tokens_mask="inputs.tokens_mask")
    else:  # the run tokenizes the task itself (the tokenizer's files become its assets)
        spec["inputs"]["instruction"] = {"kind": "text", "description": f"the task (tokenized with {name})"}
    bb = spec["blocks"]["backbone"]
    bb["with"] = {"vision": s["vision"], "text": s["text"], "resize": True}
    if tokenizer is not None:
        bb["with"].update(tokenizer=str(tokenizer), max_length=length)
    head = spec["blocks"]["head"]["with"]
    head.update({k: s["expert"][k] for k in ("width", "layers", "mlp", "heads", "kv_heads", "head_dim")})
    head.update(max_state_dim=cfg["max_state_dim"], max_action_dim=cfg["max_action_dim"],
                num_steps=int(cfg.get("num_inference_steps", 10)),
                min_period=float(cfg.get("min_period", 0.004)), max_period=float(cfg.get("max_period", 4.0)),
                time_beta=[float(cfg.get("time_sampling_beta_alpha", 1.5)),
                           float(cfg.get("time_sampling_beta_beta", 1.0))],
                time_scale=float(cfg.get("time_sampling_scale", 0.999)),
                time_offset=float(cfg.get("time_sampling_offset", 0.001)))
    if not features["state"]:
        spec["blocks"]["head"]["in"].pop("state", None)
    tr = spec["trainer"]
    optimizer_settings(tr, cfg)
    tr["max_steps"] = int(cfg.get("scheduler_decay_steps", tr["max_steps"]))
    key_map = {cam: f"images[{i}]" for i, cam in enumerate(features["cameras"])}
    if features["state"]:
        key_map["observation.state"] = "state"
    if tokenizer is None:
        key_map.update({TOKENS_KEY: "tokens", TOKENS_MASK_KEY: "tokens_mask"})
    else:
        key_map["task"] = "instruction"
    return key_map


def fixed_tables(cg) -> dict:
    """The action expert's LM head (vocab x expert width), saved by LeRobot but never read: checked by shape.
    The same for pi0.5, whose expert has the same width parameter."""
    shape = (cg.model["backbone"].embed_tokens.weight.shape[0], cg.model["head"].params["width"])
    return {EXPERT_LM_HEAD: shape, EXPERT_LM_HEAD[len("model."):]: shape}
