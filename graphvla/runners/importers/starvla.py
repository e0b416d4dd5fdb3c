"""`graphvla import starvla CKPT_DIR -o RUN`: a run folder written by starVLA's trainer
(github.com/starVLA/starVLA, starVLA/training/train_starvla.py) -> a GraphVLA run.

What starVLA's trainer leaves in its output_dir, and what becomes of it:

  config.yaml                  framework.name (one of FRAMEWORKS: its packaged graph for the base VLM's
                               model_type, e.g. QwenOFT -> starvla/qwen3vl-oft or starvla/qwen25vl-oft),
                               framework.action_model.action_dim / action_horizon, framework.qwenvl.base_vlm,
                               datasets.vla_data.CoT_prompt (-> the VLM block's prompt_template), and what
                               the framework's own entry reads (its `configure`)
  checkpoints/steps_N_model.safetensors | steps_N_pytorch_model.pt, or final_model/model.safetensors |
  pytorch_model.pt             every tensor mapped to the graph's state_dict (a missing, extra or
                               misshapen one is refused, naming the file and the key)
  dataset_statistics.json      DATASET -> action -> q01 / q99 / mask: the run's q01_q99 normalization
  base VLM folder              (config.yaml's base_vlm, or --base-vlm) its config.json, tokenizer and
                               processor, copied into the run; the tokenizer must hold starVLA's
                               placeholder token as one token

starVLA serves un-normalized actions as FrameworkTools.unnormalize_actions does: clamp the
normalized chunk to [-1, 1], threshold the gripper channel (6) at 0.5 to {0, 1}, rescale the
dimensions whose mask is true by q01/q99 and leave the others as they are. The run's postprocess
is that: an `action_bounds` step (clamp, channel 6 binarised; a dimension with q01 == q99 set to 0)
before the graph's q01_q99 un-normalization, whose statistics for an unmasked dimension are
q01 = -1, q99 = 1 (the identity). The run is written in a temporary folder renamed into place: on
any error nothing is left at RUN.

Frameworks are a table (FRAMEWORKS, one `Framework` entry each: its graphs per base VLM, its key
prefix table, its config checks and spec edits); a framework starVLA registers that has no entry is
refused by name. Adding one is adding an entry whose parity fixture proves its graph."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ...fileio import TMP_PREFIX, sha256_of
from .checkpoint_keys import fitted, listed

# every framework starVLA registers at 0ed0aad; those without a FRAMEWORKS entry are refused by name
STARVLA_FRAMEWORKS = (
    "ABot_M0", "ACT", "CosmoPredict2GR00T", "CosmoPredict2OFT", "CosmoPredict2PI", "CosmosGR00T", "DiffusionPolicy",
    "EgoVLA", "Gemma4GR00T", "Gemma4PI", "InternVLA-M1", "LangForce", "MiniCPMGR00T", "MiniCPMPI", "PI0", "PI05", "Pi0",
    "Pi05", "QwenAdapter", "QwenDiscreteDiffusion", "QwenDual", "QwenFM", "QwenFast", "QwenGR00T", "QwenOFT", "QwenPI",
    "QwenPI_v3", "WanGR00T", "WanOFT", "WanPI")
GRIPPER = 6  # FrameworkTools.unnormalize_actions' gripper_channel_idx
THRESHOLD = 0.5
_TINY = 1e-6  # processors/normalize's: a narrower q01..q99 is shifted, not scaled


@dataclass(frozen=True)
class Framework:
    """One starVLA framework GraphVLA represents.

    graphs:       the base VLM's config.json model_type -> the packaged graph (proven by a parity fixture)
    key_prefixes: starVLA module paths <-> the graph's, one table read both ways ({i}: a block index)
    configure:    configure(spec, cfg, cfg_path, horizon, dim): the framework's own checks of config.yaml
                  (a StarVLAImportError naming the field) and edits of the graph's spec (widths, ports)
    placeholder:  the prompt holds starVLA's action placeholder token (the tokenizer must hold it as one)
    action_tokens: the VLM writes FAST action tokens (QwenFast): the FAST tokenizer (--fast-tokenizer)
                  and the base VLM's <robot_action_i> ids go into the spec (configure_action_tokens)"""
    name: str
    graphs: dict
    key_prefixes: tuple
    configure: Callable | None = None
    placeholder: bool = True
    action_tokens: bool = False


def _configure_oft(spec: dict, cfg: dict, cfg_path: Path, horizon: int, dim: int) -> None:
    kind = (cfg["framework"].get("action_model") or {}).get("action_model_type", "MLP")
    if kind != "MLP":
        raise StarVLAImportError(f"{cfg_path}: framework.action_model.action_model_type '{kind}' is not QwenOFT's MLP")
    spec["blocks"]["vlm"]["with"]["action_placeholders"] = horizon


# QwenGR00T's action_model defaults at 0ed0aad (QwenGR00TDefaultConfig, merged under config.yaml's
# values by starVLA's from_pretrained as well), the DiT sizes of its action_model_type
# (GR00T_ActionHeader.DiTConfig) and the DiT settings head.gr00t_flow_matching has fixed.
_GR00T_DEFAULTS = {"hidden_size": 1024, "add_pos_embed": True, "max_seq_len": 1024, "state_dim": 7,
                   "repeated_diffusion_steps": 8, "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999,
                   "num_timestep_buckets": 1000, "num_inference_timesteps": 4, "num_target_vision_tokens": 32}
_GR00T_DIT_DEFAULTS = {"dropout": 0.2, "final_dropout": True, "interleave_self_attention": True, "num_layers": 16,
                       "output_dim": 1024}
_GR00T_DIT_SIZES = {"DiT-B": (768, 64, 12), "DiT-L": (1536, 48, 32)}  # width, head width, heads
_GR00T_DIT_FIXED = {"norm_type": "ada_norm", "positional_embeddings": None, "activation_fn": "gelu-approximate",
                    "attention_bias": True, "norm_elementwise_affine": False, "norm_eps": 1e-5}


def _configure_gr00t(spec: dict, cfg: dict, cfg_path: Path, horizon: int, dim: int) -> None:
    model = dict(cfg["framework"].get("action_model") or {})
    field = "framework.action_model"
    kind = model.get("action_model_type", "DiT-B")
    dit = {**_GR00T_DIT_DEFAULTS, **dict(model.get("diffusion_model_cfg") or {})}
    if kind in _GR00T_DIT_SIZES:
        width, head_width, heads = _GR00T_DIT_SIZES[kind]
    elif "num_attention_heads" in dit and "attention_head_dim" in dit:
        # a size added to starVLA's DiTConfig: its width is heads x head width (starVLA cannot run
        # another), and the weights' shapes are checked against it
        heads, head_width = int(dit["num_attention_heads"]), int(dit["attention_head_dim"])
        width = heads * head_width
    else:
        raise StarVLAImportError(f"{cfg_path}: {field}.action_model_type '{kind}' is not one of QwenGR00T's DiT sizes "
                                 f"({', '.join(_GR00T_DIT_SIZES)}) and diffusion_model_cfg does not give "
                                 f"num_attention_heads and attention_head_dim")
    for key, value in _GR00T_DIT_FIXED.items():
        if key in dit and dit[key] != value:
            raise StarVLAImportError(f"{cfg_path}: {field}.diffusion_model_cfg.{key} is {dit[key]!r}; GraphVLA's "
                                     f"head.gr00t_flow_matching has starVLA's default {value!r} only")
    heads, head_width = int(dit.get("num_attention_heads", heads)), int(dit.get("attention_head_dim", head_width))
    if heads * head_width != width:
        raise StarVLAImportError(f"{cfg_path}: {field}.diffusion_model_cfg: {heads} heads x {head_width} is not "
                                 f"{kind}'s width {width} (starVLA itself cannot build that head)")
    if dit.get("use_canonical_forward") is not None:  # starVLA's deprecated alias wins when set
        dit["interleave_self_attention"] = bool(dit["use_canonical_forward"])
    am = {**_GR00T_DEFAULTS, **model}
    state_dim = int(am["state_dim"] or 0)
    spec["blocks"]["head"]["with"].update(
        width=width, heads=heads, layers=int(dit["num_layers"]), output_dim=int(dit["output_dim"]),
        hidden=int(am["hidden_size"]), state_dim=state_dim, future_tokens=int(am["num_target_vision_tokens"]),
        add_pos_embed=bool(am["add_pos_embed"]), max_seq_len=int(am["max_seq_len"]),
        interleave_self_attention=bool(dit["interleave_self_attention"]), dropout=float(dit["dropout"]),
        final_dropout=bool(dit["final_dropout"]), repeated_diffusion_steps=int(am["repeated_diffusion_steps"]),
        noise_beta_alpha=float(am["noise_beta_alpha"]), noise_beta_beta=float(am["noise_beta_beta"]),
        noise_s=float(am["noise_s"]), num_timestep_buckets=int(am["num_timestep_buckets"]),
        num_steps=int(am["num_inference_timesteps"]))
    _raw_state(spec, state_dim)


def _raw_state(spec: dict, state_dim: int) -> None:
    """GR00T's and QwenPI's state port: `state_dim` wide, fed to the head's state encoder unchanged, as
    starVLA's predict_action takes it from its client (its deployment normalizes it with the robot's
    data-config transform); no state encoder (state_dim 0): no state port. Only the actions are normalized."""
    spec["trainer"]["normalization"] = {"actions": "q01_q99"}
    if state_dim:
        spec["inputs"]["state"]["dim"] = state_dim
    else:
        del spec["inputs"]["state"]
        del spec["blocks"]["head"]["in"]["state"]


# QwenPI_v3's and QwenPI's action_model defaults at 0ed0aad (QwenPI_v3DefaultConfig / QwenPIDefaultConfig,
# merged under config.yaml's values by starVLA's from_pretrained as well), their DiT's
# (cross_attention_dit.DiT) and the DiT settings head.layerwise_fm has fixed. The action decoder's and
# the state encoder's hidden width is 1024 in starVLA's code, not a setting.
_PI_DEFAULTS = {"state_dim": 7, "num_inference_timesteps": 4, "add_pos_embed": True, "max_seq_len": 1024,
                "num_target_vision_tokens": 32, "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999,
                "num_timestep_buckets": 1000}
_PI_DIT_DEFAULTS = {"QwenPI_v3": {"action_dit_hidden_dim": 1024, "interleave_self_attention": False},
                    "QwenPI": {"interleave_self_attention": True}}
_PI_DIT_COMMON = {"dropout": 0.2, "final_dropout": True, "attention_head_dim": 64, "output_dim": 26}
_PI_DIT_FIXED = {"norm_type": "ada_norm", "positional_embeddings": None, "activation_fn": "gelu-approximate",
                 "attention_bias": True, "norm_elementwise_affine": False, "norm_eps": 1e-5, "upcast_attention": False}


def _check_dit(dit: dict, fixed: dict, head: str, cfg_path: Path, field: str) -> None:
    """A layer-wise head's diffusion_model_cfg (`dit`, defaults merged): StarVLAImportError when a setting
    `head` has fixed differs from starVLA's default; starVLA's deprecated alias use_canonical_forward,
    when set, wins over interleave_self_attention (updated in place)."""
    for key, value in fixed.items():
        if key in dit and dit[key] != value:
            raise StarVLAImportError(f"{cfg_path}: {field}.diffusion_model_cfg.{key} is {dit[key]!r}; GraphVLA's "
                                     f"{head} has starVLA's default {value!r} only")
    if dit.get("use_canonical_forward") is not None:
        dit["interleave_self_attention"] = bool(dit["use_canonical_forward"])


def _configure_layerwise(spec: dict, cfg: dict, cfg_path: Path, name: str) -> None:
    """QwenPI_v3 and QwenPI: starvla/*-pi-v3 and starvla/*-pi, head.layerwise_fm."""
    model = {**_PI_DEFAULTS, **dict(cfg["framework"].get("action_model") or {})}
    field = "framework.action_model"
    # action_model_type is not read: both frameworks always build LayerwiseFlowmatchingActionHead
    dit = {**_PI_DIT_COMMON, **_PI_DIT_DEFAULTS[name], **dict(model.get("diffusion_model_cfg") or {})}
    _check_dit(dit, _PI_DIT_FIXED, "head.layerwise_fm", cfg_path, field)
    vlm_config = spec["blocks"]["vlm"]["with"]["config"]
    vlm_width = int((vlm_config.get("text_config") or {}).get("hidden_size") or vlm_config["hidden_size"])
    width = vlm_width
    if name == "QwenPI_v3":  # its DiT width: action_dit_hidden_dim (None: the VLM's width, and no projectors)
        width = int(dit.get("action_dit_hidden_dim") or vlm_width)
        if width == vlm_width:
            del spec["blocks"]["project"]
            spec["blocks"]["head"]["in"]["context"] = "vlm.layers"
        else:
            spec["blocks"]["project"]["with"]["width"] = width
    head_dim = int(dit["attention_head_dim"] or 64)
    if width % head_dim:
        raise StarVLAImportError(f"{cfg_path}: {field}.diffusion_model_cfg.attention_head_dim {head_dim} does not "
                                 f"divide the DiT width {width}")
    if name == "QwenPI_v3":  # it reads the repeats from the trainer section (16 when it lacks the key)
        trainer = cfg.get("trainer")
        repeats = int(trainer.get("repeated_diffusion_steps", 16)) if trainer else 4
    else:  # QwenPI's forward sets 2 whatever the config says
        repeats = 2
    state_dim = int(model["state_dim"] or 0)
    spec["blocks"]["head"]["with"].update(
        attention_head_dim=head_dim, output_dim=int(dit["output_dim"]), state_dim=state_dim,
        future_tokens=int(model["num_target_vision_tokens"]), add_pos_embed=bool(model["add_pos_embed"]),
        max_seq_len=int(model["max_seq_len"]), interleave_self_attention=bool(dit["interleave_self_attention"]),
        dropout=float(dit["dropout"]), final_dropout=bool(dit["final_dropout"]), repeated_diffusion_steps=repeats,
        noise_beta_alpha=float(model["noise_beta_alpha"]), noise_beta_beta=float(model["noise_beta_beta"]),
        noise_s=float(model["noise_s"]), num_timestep_buckets=int(model["num_timestep_buckets"]),
        num_steps=int(model["num_inference_timesteps"]))
    if name == "QwenPI":
        _raw_state(spec, state_dim)
        return
    include_state = ((cfg.get("datasets") or {}).get("vla_data") or {}).get("include_state", False)
    if include_state not in ("False", False, None):
        # trained with a state in its examples: QwenPI_v3 writes it into the prompt (256 bins over
        # [-1, 1] after the instruction) and drops the tensor; the state port is state_dim wide (the
        # config's only record of it) and fed as starVLA's predict_action takes it (not normalized)
        if not state_dim:
            raise StarVLAImportError(f"{cfg_path}: datasets.vla_data.include_state is set but {field}.state_dim is "
                                     f"{model['state_dim']!r}: the state's width is unknown")
        spec["inputs"]["state"] = {"kind": "state", "dim": state_dim}
        spec["blocks"] = {"state_prompt": {"type": "glue.state_text",
                                           "in": {"text": "inputs.instruction", "state": "inputs.state"},
                                           "with": {"bins": 256, "low": -1.0, "high": 1.0,
                                                    "template": "{text} [STATE] {state} [ACTION]"}},
                          **spec["blocks"]}
        spec["blocks"]["vlm"]["in"]["text"] = "state_prompt.text"
        spec["trainer"]["normalization"] = {"actions": "q01_q99", "state": "identity"}


def _configure_pi_v3(spec: dict, cfg: dict, cfg_path: Path, horizon: int, dim: int) -> None:
    _configure_layerwise(spec, cfg, cfg_path, "QwenPI_v3")


def _configure_pi(spec: dict, cfg: dict, cfg_path: Path, horizon: int, dim: int) -> None:
    _configure_layerwise(spec, cfg, cfg_path, "QwenPI")


# QwenDiscreteDiffusion's action_model defaults at 0ed0aad (QwenDiscreteDiffusionDefaultConfig) and
# the DiT settings head.layerwise_discrete_diffusion has fixed. Its head sets the DiT's depth and width
# from the VLM and its attention heads to 64 wide whatever diffusion_model_cfg says.
_DD_DEFAULTS = {"state_dim": 7, "repeated_diffusion_steps": 2, "add_pos_embed": True, "max_seq_len": 1024,
                "num_target_vision_tokens": 32, "representation": "bin", "num_bins": 256, "action_low": -1.0,
                "action_high": 1.0, "num_inference_steps": 8, "train_mask_schedule": "cosine",
                "decode_schedule": "cosine", "no_mask_token_prob": 0.0, "l1_loss_weight": 0.1, "use_simple_max": False}
_DD_DIT_DEFAULTS = {"dropout": 0.2, "final_dropout": True, "interleave_self_attention": True,
                    "max_num_positional_embeddings": 512}
_DD_DIT_FIXED = {"norm_type": "ada_norm", "positional_embeddings": "sinusoidal", "activation_fn": "gelu-approximate",
                 "attention_bias": True, "norm_elementwise_affine": False, "norm_eps": 1e-5, "upcast_attention": False}


def _configure_dd(spec: dict, cfg: dict, cfg_path: Path, horizon: int, dim: int) -> None:
    model = {**_DD_DEFAULTS, **dict(cfg["framework"].get("action_model") or {})}
    field = "framework.action_model"
    # action_model_type is not read: QwenDiscreteDiffusion always builds its LayerwiseDD head (starVLA's own
    # training files say DiT-B), sized from the VLM, so diffusion_model_cfg's num_layers / widths are unused too
    dit = {**_DD_DIT_DEFAULTS, **dict(model.get("diffusion_model_cfg") or {})}
    _check_dit(dit, _DD_DIT_FIXED, "head.layerwise_discrete_diffusion", cfg_path, field)
    for key, allowed in (("representation", ("bin", "bit")), ("train_mask_schedule", ("cosine", "linear")),
                         ("decode_schedule", ("cosine", "linear"))):
        if model[key] not in allowed:
            raise StarVLAImportError(f"{cfg_path}: {field}.{key} is {model[key]!r}, not one of {', '.join(allowed)}")
    state_dim = int(model["state_dim"] or 0)
    spec["blocks"]["head"]["with"].update(
        representation=model["representation"], num_bins=int(model["num_bins"]), action_low=float(model["action_low"]),
        action_high=float(model["action_high"]), num_steps=int(model["num_inference_steps"]),
        train_mask_schedule=model["train_mask_schedule"], decode_schedule=model["decode_schedule"],
        no_mask_token_prob=float(model["no_mask_token_prob"]), l1_loss_weight=float(model["l1_loss_weight"]),
        repeated_diffusion_steps=int(model["repeated_diffusion_steps"]), use_simple_max=bool(model["use_simple_max"]),
        future_tokens=int(model["num_target_vision_tokens"]), add_pos_embed=bool(model["add_pos_embed"]),
        max_seq_len=int(model["max_seq_len"]), max_positions=int(dit["max_num_positional_embeddings"]),
        dropout=float(dit["dropout"]), final_dropout=bool(dit["final_dropout"]),
        interleave_self_attention=bool(dit["interleave_self_attention"]), state_dim=state_dim)
    # starVLA's predict_action takes the state as its client gives it: the run feeds it unchanged
    spec["trainer"]["normalization"] = {"actions": "q01_q99"}
    if state_dim:
        spec["inputs"]["state"]["dim"] = state_dim
    else:  # no state encoder: no state port
        del spec["inputs"]["state"]
        del spec["blocks"]["head"]["in"]["state"]


def _configure_fast(spec: dict, cfg: dict, cfg_path: Path, horizon: int, dim: int) -> None:
    kind = (cfg["framework"].get("action_model") or {}).get("action_model_type", "FAST")
    if kind != "FAST":
        raise StarVLAImportError(f"{cfg_path}: framework.action_model.action_model_type '{kind}' is not QwenFast's FAST")
    # the longest chunk: two byte-level BPE tokens per DCT coefficient at most, then the end token
    vlm = spec["blocks"]["vlm"]["with"]
    vlm["max_new_tokens"] = max(int(vlm.get("max_new_tokens", 0)), 2 * horizon * dim + 1)


FAST_HUB_ID = "physical-intelligence/fast"  # what starVLA's playground/Pretrained_models/fast holds


def configure_action_tokens(spec: dict, vlm_dir: Path, fast_tokenizer, framework: str) -> Path:
    """QwenFast: the FAST tokenizer folder (`fast_tokenizer`, else physical-intelligence/fast from the
    Hub cache; starVLA reads it from outside the checkpoint) and the base VLM tokenizer's
    <robot_action_i> ids (consecutive, one per FAST id) set into the spec. Returns the folder."""
    from ... import hub
    from ...processors.fast_hub import HubFASTTokenizer, is_hub_fast
    from ...processors.hf_processor import load_processor

    folder = Path(fast_tokenizer) if fast_tokenizer is not None else hub.cached_snapshot(FAST_HUB_ID)
    if folder is None:
        raise StarVLAImportError(f"starVLA {framework} reads its FAST tokenizer from outside the checkpoint "
                                 f"(playground/Pretrained_models/fast, i.e. {FAST_HUB_ID}): give that folder with "
                                 f"--fast-tokenizer (the Hugging Face Hub cache has no {FAST_HUB_ID} either)")
    if not is_hub_fast(folder):
        raise StarVLAImportError(f"{folder}: not a FAST tokenizer in {FAST_HUB_ID}'s format (processor_config.json "
                                 f"and tokenizer.json), which starVLA's {framework} loads")
    try:
        fast = HubFASTTokenizer.load(folder)
    except (FileNotFoundError, ValueError) as e:
        raise StarVLAImportError(str(e)) from None
    try:
        tok = load_processor(vlm_dir).tokenizer
    except Exception as e:  # noqa: BLE001 - re-raised naming the folder
        raise StarVLAImportError(f"{vlm_dir}: the base VLM's processor does not load: {e}") from None
    n = fast.vocab_size
    ids = tok.convert_tokens_to_ids([f"<robot_action_{i}>" for i in range(n)])
    if ids[0] is None or ids[0] == tok.unk_token_id or ids != list(range(ids[0], ids[0] + n)):
        raise StarVLAImportError(f"{vlm_dir / 'tokenizer.json'}: starVLA {framework} writes FAST id i as the token "
                                 f"<robot_action_i>; this tokenizer does not hold <robot_action_0..{n - 1}> ({n}, the "
                                 f"FAST vocabulary of {folder}) as consecutive tokens (an -Action checkpoint made by "
                                 f"starVLA's add_special_tokens_to_qwen.py does)")
    spec["blocks"]["vlm"]["with"].update(action_vocab=n, action_token_base=int(ids[0]))
    for block in ("action_tokens", "head"):
        spec["blocks"][block]["with"]["tokenizer"] = str(folder.resolve())
    return folder


# The VLM wrapper holds the transformers model as backbone.hf_vlm does; QwenOFT's MLP-ResNet layers
# are head.mlp_resnet's; head.gr00t_flow_matching's modules carry starVLA's names.
_VLM_PREFIX = ("qwen_vl_interface.model.", "vlm.model.")
FRAMEWORKS = {f.name: f for f in [
    Framework("QwenOFT", {"qwen3_vl": "starvla/qwen3vl-oft", "qwen2_5_vl": "starvla/qwen25vl-oft"}, (
        _VLM_PREFIX,
        ("action_model.model.layer_norm1.", "head.norm_in."),
        ("action_model.model.fc1.", "head.linear_in."),
        ("action_model.model.mlp_resnet_blocks.{i}.ffn.0.", "head.blocks.{i}.norm."),
        ("action_model.model.mlp_resnet_blocks.{i}.ffn.1.", "head.blocks.{i}.linear."),
        ("action_model.model.layer_norm2.", "head.norm_out."),
        ("action_model.model.fc2.", "head.linear_out."),
    ), _configure_oft),
    Framework("QwenGR00T", {"qwen3_vl": "starvla/qwen3vl-gr00t", "qwen2_5_vl": "starvla/qwen25vl-gr00t"}, (
        _VLM_PREFIX,
        ("action_model.", "head."),
    ), _configure_gr00t, placeholder=False),
    Framework("QwenPI_v3", {"qwen3_vl": "starvla/qwen3vl-pi-v3", "qwen2_5_vl": "starvla/qwen25vl-pi-v3"}, (
        _VLM_PREFIX,
        ("project_layers.", "project.layers."),
        ("action_model.", "head."),
    ), _configure_pi_v3, placeholder=False),
    *[Framework(name, {"qwen3_vl": "starvla/qwen3vl-pi", "qwen2_5_vl": "starvla/qwen25vl-pi"}, (
        _VLM_PREFIX,
        ("action_model.", "head."),
    ), _configure_pi, placeholder=False) for name in ("QwenPI", "QwenFM")],  # QwenFM: QwenPI's other registered name
    Framework("QwenDiscreteDiffusion", {"qwen3_vl": "starvla/qwen3vl-discrete-diffusion",
                                        "qwen2_5_vl": "starvla/qwen25vl-discrete-diffusion"}, (
        _VLM_PREFIX,
        ("action_model.", "head."),
    ), _configure_dd, placeholder=False),
]}
FRAMEWORKS["QwenFast"] = Framework(  # the VLM's own LM head writes the actions: its weights are all there is
    "QwenFast", {"qwen3_vl": "starvla/qwen3vl-fast", "qwen2_5_vl": "starvla/qwen25vl-fast"}, (_VLM_PREFIX,),
    _configure_fast, placeholder=False, action_tokens=True)
NOT_YET = tuple(n for n in STARVLA_FRAMEWORKS if n not in FRAMEWORKS)


class StarVLAImportError(ValueError):
    """A starVLA checkpoint that cannot become a run; the message names the file and the key."""


def _renamed(key: str, pairs) -> str | None:
    """`key` with the first matching (source, target) prefix replaced; None when none matches."""
    for source, target in pairs:
        m = re.match(re.escape(source).replace(re.escape("{i}"), r"(\d+)"), key)
        if m:
            prefix = target.replace("{i}", m.group(1)) if m.groups() else target
            return prefix + key[m.end():]
    return None


def graph_key(key: str, framework: str = "QwenOFT") -> str | None:
    """The graph's state_dict key of a starVLA key of `framework` (None for one no graph tensor takes)."""
    return _renamed(key, FRAMEWORKS[framework].key_prefixes)


def starvla_key(name: str, framework: str = "QwenOFT") -> str:
    """starVLA's state_dict key of a graph key of `framework` (the inverse of graph_key)."""
    return _renamed(name, [(b, a) for a, b in FRAMEWORKS[framework].key_prefixes]) or name


def _get(cfg: dict, dotted: str, file: Path, required: bool = True):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if required:
                raise StarVLAImportError(f"{file}: no '{dotted}'")
            return None
        node = node[part]
    return node


def read_config(ckpt_dir: Path) -> tuple[Path, dict]:
    path = ckpt_dir / "config.yaml"
    if not path.is_file():
        raise StarVLAImportError(f"{ckpt_dir}: no config.yaml (starVLA's trainer writes it in its output_dir)")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StarVLAImportError(f"{path}: not YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise StarVLAImportError(f"{path}: not a mapping")
    return path, cfg


def check_framework(cfg: dict, path: Path) -> Framework:
    name = _get(cfg, "framework.name", path)
    if name in FRAMEWORKS:
        return FRAMEWORKS[name]
    if name in NOT_YET:
        raise StarVLAImportError(f"{path}: framework.name '{name}' is a starVLA framework GraphVLA cannot represent yet "
                           f"(importable: {', '.join(FRAMEWORKS)})")
    raise StarVLAImportError(f"{path}: framework.name '{name}' is not a starVLA framework GraphVLA knows "
                       f"(importable: {', '.join(FRAMEWORKS)}; not representable yet: {', '.join(NOT_YET)})")


def graph_of(framework: Framework, vlm_config: dict, config_file: Path) -> str:
    """The framework's packaged graph for the base VLM (its config.json's model_type)."""
    kind = vlm_config.get("model_type")
    if kind not in framework.graphs:
        raise StarVLAImportError(f"{config_file}: model_type '{kind}': starVLA {framework.name} is importable on "
                                 f"{', '.join(framework.graphs)} only")
    return framework.graphs[kind]


def find_weights(ckpt_dir: Path, weights: Path | None = None) -> tuple[Path, int]:
    """(the weights file, its step): `weights` when given, else final_model/ or the latest checkpoints/steps_N_*."""
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise StarVLAImportError(f"{weights}: no such weights file")
        m = re.match(r"steps_(\d+)_", weights.name)
        return weights, int(m.group(1)) if m else 0
    for name in ("model.safetensors", "pytorch_model.pt"):
        if (ckpt_dir / "final_model" / name).is_file():
            steps = [int(m.group(1)) for p in (ckpt_dir / "checkpoints").glob("steps_*")
                     if (m := re.match(r"steps_(\d+)_", p.name))] if (ckpt_dir / "checkpoints").is_dir() else []
            return ckpt_dir / "final_model" / name, max(steps, default=0)
    found = []
    for p in (ckpt_dir / "checkpoints").glob("steps_*") if (ckpt_dir / "checkpoints").is_dir() else []:
        m = re.match(r"steps_(\d+)_(model\.safetensors|pytorch_model\.pt)$", p.name)
        if m:
            found.append((int(m.group(1)), p))
    if not found:
        raise StarVLAImportError(f"{ckpt_dir}: no weights (final_model/model.safetensors or pytorch_model.pt, "
                           f"checkpoints/steps_N_model.safetensors or steps_N_pytorch_model.pt)")
    step, path = max(found)
    return path, step


def read_weights(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise StarVLAImportError(f"{path}: not a state_dict")
    return state


def read_statistics(ckpt_dir: Path, action_dim: int, dataset_key: str | None) -> tuple[Path, str, dict]:
    """(the file, the dataset key, its action block with q01/q99/mask as float/bool arrays)."""
    path = ckpt_dir / "dataset_statistics.json"
    if not path.is_file():
        raise StarVLAImportError(f"{ckpt_dir}: no dataset_statistics.json (starVLA's dataloader writes it in its output_dir)")
    stats = json.loads(path.read_text())
    if dataset_key is None:
        if len(stats) != 1:
            raise StarVLAImportError(f"{path}: statistics of {len(stats)} datasets ({', '.join(stats)}): "
                               f"choose one with --dataset-key")
        dataset_key = next(iter(stats))
    if dataset_key not in stats:
        raise StarVLAImportError(f"{path}: no dataset '{dataset_key}' (has {', '.join(stats)})")
    action = (stats[dataset_key] or {}).get("action")
    if not isinstance(action, dict):
        raise StarVLAImportError(f"{path}: no '{dataset_key}.action'")
    out = {}
    for key in ("q01", "q99"):
        if key not in action:
            raise StarVLAImportError(f"{path}: no '{dataset_key}.action.{key}' (starVLA un-normalizes with q01/q99)")
    for key, value in action.items():
        arr = np.asarray(value, dtype=bool if key == "mask" else np.float64)
        if arr.shape != (action_dim,):
            raise StarVLAImportError(f"{path}: '{dataset_key}.action.{key}' has {arr.shape[0] if arr.ndim == 1 else arr.shape} "
                               f"values, but config.yaml's framework.action_model.action_dim is {action_dim}")
        out[key] = arr
    out.setdefault("mask", np.ones(action_dim, dtype=bool))
    return path, dataset_key, out


def check_tokenizer(vlm_dir: Path, token: str, framework: str) -> None:
    from ...processors.hf_processor import load_processor

    try:
        tok = load_processor(vlm_dir).tokenizer
    except Exception as e:  # noqa: BLE001 - re-raised naming the folder
        raise StarVLAImportError(f"{vlm_dir}: the base VLM's processor does not load: {e}") from None
    ids = tok.encode(token, add_special_tokens=False)
    if len(ids) != 1 or tok.convert_ids_to_tokens(ids[0]) != token:
        raise StarVLAImportError(f"{vlm_dir / 'tokenizer.json'}: starVLA {framework}'s action token {token!r} "
                           f"(U+{ord(token):X}) is not one token of this tokenizer (it encodes to {ids})")


def read_vlm_config(vlm_dir: Path) -> tuple[Path, dict]:
    config_file = vlm_dir / "config.json"
    if not config_file.is_file():
        raise StarVLAImportError(f"{vlm_dir}: the base VLM folder has no config.json (config.yaml's framework.qwenvl.base_vlm)")
    return config_file, json.loads(config_file.read_text())


def build_spec(cfg: dict, cfg_path: Path, framework: Framework, graph: str, vlm_dir: Path, vlm_config: dict,
               views: int, image_size: int) -> dict:
    from ...spec.loader import load_spec

    spec = copy.deepcopy(load_spec(graph).data)
    horizon = int(_get(cfg, "framework.action_model.action_horizon", cfg_path))
    dim = int(_get(cfg, "framework.action_model.action_dim", cfg_path))
    vlm = spec["blocks"]["vlm"]["with"]
    for key in ("model", "dtype", "gradient_checkpointing"):
        vlm.pop(key, None)
    vlm.update(config=vlm_config, processor=str(vlm_dir.resolve()), dtype="float32")
    template = _get(cfg, "datasets.vla_data.CoT_prompt", cfg_path, required=False)
    if template:
        vlm["prompt_template"] = template
    spec["inputs"]["images"].update(views=views, size=[image_size, image_size])
    spec["inputs"]["actions"].update(dim=dim, horizon=horizon)
    if "actions_mask" in spec["inputs"]:
        spec["inputs"]["actions_mask"]["shape"] = [horizon]
    if framework.configure is not None:
        framework.configure(spec, cfg, cfg_path, horizon, dim)
    spec["description"] = f"starVLA {framework.name} imported from {cfg_path.parent} (graph {graph})"
    return spec


def map_weights(state: dict, expected: dict, weights_path: Path, framework: str = "QwenOFT") -> dict:
    """starVLA's tensors under the graph's names, each checked: no unknown, extra, missing or misshapen key."""
    mapped, unknown = {}, []
    for key, tensor in state.items():
        name = graph_key(key, framework)
        if name is None or name not in expected:
            unknown.append(key)
            continue
        mapped[name] = fitted(key, tensor, name, expected[name], weights_path, StarVLAImportError)
    if unknown:
        raise StarVLAImportError(f"{weights_path}: {len(unknown)} tensor(s) the graph has no place for: "
                                 + listed(sorted(unknown)))
    missing = sorted(k for k in expected if k not in mapped)
    if missing:
        raise StarVLAImportError(f"{weights_path}: {len(missing)} tensor(s) missing: "
                                 + listed(starvla_key(k, framework) for k in missing))
    return mapped


def normalization(action: dict) -> tuple[dict, dict, list]:
    """(statistics for the run's `actions` port, modes, the channels set to 0 before un-normalizing)."""
    q01, q99, mask = action["q01"].copy(), action["q99"].copy(), action["mask"]
    q01[~mask], q99[~mask] = -1.0, 1.0  # starVLA leaves an unmasked dimension normalized: the identity
    constant = [int(i) for i in np.nonzero(mask & (q99 - q01 < _TINY))[0]]
    stats = {"actions": {"q01": q01.tolist(), "q99": q99.tolist()}}
    return stats, {"actions": "q01_q99"}, constant


def import_starvla(ckpt_dir, out, *, weights=None, base_vlm=None, dataset_key=None, views: int = 2,
                   image_size: int = 224, fast_tokenizer=None) -> Path:
    """Write GraphVLA run `out` from starVLA run folder `ckpt_dir`; returns `out`. Raises StarVLAImportError
    (a ValueError) naming the file and key of what does not fit; nothing is left at `out` then."""
    import torch
    from safetensors.torch import save_file

    from ...blocks.base import parameters_on_meta
    from ...blocks.backbones.hf_vlm import PLACEHOLDER
    from ...compiler.compile import compile_graph
    from ...data.normalize import Normalizer
    from ...policy import checkpoint as C
    from ...processors.action_bounds import ActionBounds
    from ...processors.base import Pipeline
    from ...spec.loader import load_spec

    ckpt_dir, out = Path(ckpt_dir), Path(out)
    if not ckpt_dir.is_dir():
        raise StarVLAImportError(f"{ckpt_dir}: not a folder (a starVLA run's output_dir)")
    if out.exists():
        raise StarVLAImportError(f"{out}: already exists (the import writes a new run folder)")
    cfg_path, cfg = read_config(ckpt_dir)
    framework = check_framework(cfg, cfg_path)
    dim = int(_get(cfg, "framework.action_model.action_dim", cfg_path))
    vlm_dir = Path(base_vlm) if base_vlm else Path(str(_get(cfg, "framework.qwenvl.base_vlm", cfg_path)))
    if not vlm_dir.is_dir():
        raise StarVLAImportError(f"{cfg_path}: framework.qwenvl.base_vlm '{vlm_dir}' is not a folder here "
                           f"(give the base VLM's folder - config.json, tokenizer, processor - with --base-vlm)")
    config_file, vlm_config = read_vlm_config(vlm_dir)
    graph = graph_of(framework, vlm_config, config_file)
    if framework.placeholder:
        check_tokenizer(vlm_dir, PLACEHOLDER, framework.name)
    stats_path, key, action = read_statistics(ckpt_dir, dim, dataset_key)
    weights_path, step = find_weights(ckpt_dir, weights)
    spec_data = build_spec(cfg, cfg_path, framework, graph, vlm_dir, vlm_config, views, image_size)
    fast_dir = configure_action_tokens(spec_data, vlm_dir, fast_tokenizer, framework.name) if framework.action_tokens else None

    with tempfile.TemporaryDirectory(prefix="graphvla-import-") as scratch:
        spec_file = Path(scratch) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec_data, allow_unicode=True, sort_keys=False))
        spec = load_spec(str(spec_file))
        with parameters_on_meta():
            cg = compile_graph(spec, device="cpu")
        expected = cg.model.state_dict()
        mapped = map_weights(read_weights(weights_path), expected, weights_path, framework.name)
        stats, modes, constant = normalization(action)
        for port, decl in spec_data["inputs"].items():  # a state the run feeds on unchanged (identity)
            if decl.get("kind") == "state" and not decl.get("optional") and port not in stats:
                stats[port] = {"mean": [0.0] * int(decl["dim"]), "std": [1.0] * int(decl["dim"])}
                modes[port] = "identity"
        preprocess, post = cg.bound_pipelines(stats, modes)
        bounds = ActionBounds(("actions",), -1.0, 1.0, {GRIPPER: THRESHOLD} if dim > GRIPPER else {}, zero=constant)
        postprocess = Pipeline("postprocess", [bounds, *post])
        norm = Normalizer(stats, modes).to_dict()
        spec.file = None  # the scratch file goes away; every file the blocks read is copied into the run

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f"{TMP_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            def write(d: Path):
                C.write_policy_files(d, spec, preprocess, postprocess, json.loads(json.dumps(norm)))
                names = C.untied_names(cg.model)
                save_file({n: mapped[n] for n in names}, str(d / "model.safetensors"), metadata={"format": "pt"})

            C.write_checkpoint(tmp, step, write)
            C.write_json(tmp / "imported.json", {
                "from": "starVLA", "framework": framework.name, "graph": graph, "source": str(ckpt_dir.resolve()),
                "config": str(cfg_path.resolve()), "weights": str(weights_path.resolve()),
                "weights_sha256": sha256_of(weights_path), "tensors": len(mapped), "step": step,
                "statistics": {"file": str(stats_path.resolve()), "dataset_key": key,
                               "mask": [bool(m) for m in action["mask"]]},
                "base_vlm": str(vlm_dir.resolve()), "views": views, "image_size": image_size,
                **({"fast_tokenizer": str(fast_dir.resolve())} if fast_dir is not None else {}),
                "postprocess": ["action_bounds (clamp [-1, 1], gripper channel binarised at 0.5)",
                                "unnormalize q01_q99"]})
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out
