"""`graphvla import lerobot PRETRAINED -o RUN`: a policy LeRobot's save_pretrained wrote (a folder or
a Hugging Face Hub id) -> a GraphVLA run, served with LeRobot's observation keys.

What LeRobot 0.3.x leaves in a pretrained folder, and what becomes of it:

  config.json        `type` picks the policy's entry in POLICIES (its packaged graph, e.g. act ->
                     lerobot/act; a type without an entry is refused by name); input_features /
                     output_features give the cameras (observation.images.*, all one shape), the
                     state (observation.state), the environment state (observation.environment_state)
                     and the action width; normalization_mapping gives the modes; the policy's own
                     fields its widths and options (the entry's `configure`)
  model.safetensors  every tensor mapped to the graph's state_dict (a missing, extra or misshapen one is
                     refused, naming the key); normalize_inputs / normalize_targets / unnormalize_outputs
                     buffers become the run's statistics: state and actions as the preprocess /
                     postprocess normalization steps (MEAN_STD -> mean_std, MIN_MAX -> min_max), each
                     camera's image statistics as the image encoder's per-view `normalize`

LeRobot 0.4 and later save the model without them, and the statistics in policy_preprocessor.json /
policy_postprocessor.json (steps rename_observations / to_batch / device / normalizer, and unnormalizer
/ device; any other step is refused by name) with the normalizer steps' state files
(`<feature>.<stat>` tensors). Modes: MEAN_STD -> mean_std, MIN_MAX -> min_max, QUANTILES -> q01_q99,
QUANTILE10 -> min_max over [q10, q90] (the same map); a rename_map renames the served keys.

The run's serve section maps LeRobot's observation keys to the graph's ports (serve.key_map:
observation.images.<camera> -> images[i] in config order, observation.state -> state), so a client
sends LeRobot's names and the served metadata lists them; serve.execute_steps is n_action_steps.
The run is written in a temporary folder renamed into place: on any error nothing is left at RUN.

Numerics: LeRobot divides by (std + 1e-8) and (max - min + 1e-8); the run's steps divide by std and
(max - min) / 2 exactly (processors/normalize.py; a spread under 1e-6 is only shifted there, where
LeRobot would divide by ~1e-8). tests/test_lerobot_act.py serves an imported ACT and compares with
LeRobot's predict_action_chunk (max |diff| <= 1e-4)."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ...fileio import TMP_PREFIX, sha256_of
from . import lerobot_versions
from .checkpoint_keys import fitted, listed

# the policy types LeRobot registers (0.3.2 and 0.4.x); those without a POLICIES entry are refused by name
LEROBOT_POLICIES = ("act", "diffusion", "groot", "pi0", "pi05", "pi0fast", "reward_classifier", "sac", "smolvla",
                    "tdmpc", "vqbet", "xvla")
IMAGE_PREFIX = "observation.images."
SINGLE_IMAGE_KEY = "observation.image"  # LeRobot's OBS_IMAGE: one camera, as PushT's policies name it
STATE_KEY, ENV_KEY, ACTION_KEY = "observation.state", "observation.environment_state", "action"
MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "IDENTITY": "identity"}
PORTS = {STATE_KEY: "state", ENV_KEY: "env_state", ACTION_KEY: "actions"}


class LeRobotImportError(ValueError):
    """A pretrained folder GraphVLA cannot import (names the file, the field and the value)."""


@dataclass(frozen=True)
class PolicyType:
    name: str  # LeRobot's config `type`
    graph: str  # the packaged graph it becomes
    key_prefixes: tuple  # (LeRobot prefix, graph prefix): the first that matches renames; graph None: not a weight
    configure: Callable  # (spec, config, features, config_path, preprocessor steps) -> None: the policy's own fields
    fixed: Callable | None = None  # (graph key, our tensor, their tensor) -> None: checks a non-weight (a fixed table)
    rename: Callable | None = None  # LeRobot key -> graph key (None: a fixed table, '': unknown) instead of key_prefixes


# ACT --------------------------------------------------------------------------------------------
ACT_KEYS = (
    ("model.backbone.", "backbone.net."),
    ("model.vae_encoder_cls_embed.weight", "head.vae_cls"),
    ("model.vae_encoder_robot_state_input_proj.", "head.vae_state_in."),
    ("model.vae_encoder_action_input_proj.", "head.vae_action_in."),
    ("model.vae_encoder_latent_output_proj.", "head.vae_to_latent."),
    ("model.vae_encoder_pos_enc", None),  # a fixed sinusoid table: checked equal to the block's, not loaded
    ("model.vae_encoder.", "head.vae_encoder."),
    ("model.encoder_robot_state_input_proj.", "head.state_in."),
    ("model.encoder_env_state_input_proj.", "head.env_in."),
    ("model.encoder_latent_input_proj.", "head.latent_in."),
    ("model.encoder_img_feat_input_proj.", "head.image_in."),
    ("model.encoder_1d_feature_pos_embed.weight", "head.token_pos"),
    ("model.decoder_pos_embed.weight", "head.query_pos"),
    ("model.action_head.", "head.action_out."),
    ("model.encoder.", "head.encoder."),
    ("model.decoder.", "head.decoder."),
)


def _act_key(key: str) -> str:
    return key.replace(".multihead_attn.", ".cross_attn.")


def _configure_act(spec: dict, cfg: dict, features: dict, path: Path, steps: list) -> None:
    backbone = str(cfg.get("vision_backbone", "resnet18"))
    if features["cameras"]:
        m = re.fullmatch(r"resnet(18|34)", backbone)
        if not m:
            raise LeRobotImportError(f"{path}: vision_backbone '{backbone}' is not supported (resnet18, resnet34)")
        if cfg.get("replace_final_stride_with_dilation"):
            raise LeRobotImportError(f"{path}: replace_final_stride_with_dilation true is not supported")
        spec["blocks"]["backbone"]["with"]["depth"] = int(m.group(1))
    if int(cfg.get("n_obs_steps", 1)) != 1:
        raise LeRobotImportError(f"{path}: n_obs_steps {cfg['n_obs_steps']} is not supported (1)")
    act = {"dim_model": "width", "n_heads": "heads", "dim_feedforward": "ffn", "feedforward_activation": "activation",
           "n_encoder_layers": "encoder_layers", "n_decoder_layers": "decoder_layers", "use_vae": "vae",
           "latent_dim": "latent_dim", "n_vae_encoder_layers": "vae_layers", "pre_norm": "pre_norm",
           "dropout": "dropout", "kl_weight": "kl_weight"}
    head = spec["blocks"]["head"]["with"]
    for theirs, ours in act.items():
        if theirs in cfg:
            head[ours] = cfg[theirs]
    if head.get("activation") not in ("relu", "gelu"):
        raise LeRobotImportError(f"{path}: feedforward_activation '{head.get('activation')}' is not supported (relu, gelu)")
    spec["blocks"]["head"].setdefault("train", {})
    spec["trainer"]["lr"] = float(cfg.get("optimizer_lr", spec["trainer"]["lr"]))
    spec["trainer"]["weight_decay"] = float(cfg.get("optimizer_weight_decay", spec["trainer"]["weight_decay"]))
    spec["blocks"]["head"]["train"]["lr"] = spec["trainer"]["lr"]
    if "backbone" in spec["blocks"]:
        spec["blocks"]["backbone"].setdefault("train", {})["lr"] = float(cfg.get("optimizer_lr_backbone", 1e-5))
    coeff = cfg.get("temporal_ensemble_coeff")
    if coeff is not None:
        spec.setdefault("infer", {})["temporal_ensemble"] = {"coeff": float(coeff)}


def _act_fixed(key: str, ours, theirs) -> None:
    import torch

    if not torch.allclose(ours.float(), theirs.float(), atol=1e-6, rtol=0):
        raise LeRobotImportError(f"'{key}' differs from ACT's sinusoid table for this width and chunk (by "
                                 f"{(ours.float() - theirs.float()).abs().max().item():.2e})")


def _act_vae_pos(cg):
    head = cg.model["head"]
    return getattr(head, "vae_pos", None)


# Diffusion Policy (runners/importers/lerobot_diffusion.py: names, sizes, the observation window) ---------
def _configure_diffusion(spec: dict, cfg: dict, features: dict, path: Path, steps: list) -> dict:
    from . import lerobot_diffusion

    try:
        return lerobot_diffusion.configure(spec, cfg, features)
    except (KeyError, ValueError) as e:
        raise LeRobotImportError(f"{path}: {e.args[0] if isinstance(e, ValueError) else f'no field {e}'}") from None


def _diffusion_fixed(key: str, ours, theirs) -> None:
    import torch

    if ours.shape != theirs.shape or not torch.allclose(ours.float(), theirs.float(), atol=1e-6, rtol=0):
        raise LeRobotImportError(f"'{key}' is not the spatial-softmax grid of the graph's feature map "
                                 f"({list(theirs.shape)} vs {list(ours.shape)})")


def _diffusion_key(key: str):
    from . import lerobot_diffusion

    return lerobot_diffusion.importer_key(key)


def _delegated(loaded, missing: str):
    """(configure, fixed, rename) of a policy whose importer is the module `loaded()` returns (imported on
    first use); its KeyError/ValueError become LeRobotImportError naming the file (`missing`: what a
    KeyError lacks, 'tensor' or 'field')."""
    def configure(spec: dict, cfg: dict, features: dict, path: Path, steps: list) -> dict:
        try:
            return loaded().configure(spec, cfg, features, path.parent, steps)
        except (KeyError, ValueError) as e:
            raise LeRobotImportError(f"{path}: {e.args[0] if isinstance(e, ValueError) else f'no {missing} {e}'}") from None

    def fixed(key: str, ours, theirs) -> None:
        try:
            loaded().fixed(key, ours, theirs)
        except ValueError as e:
            raise LeRobotImportError(str(e)) from None

    def rename(key: str):
        return loaded().importer_key(key)

    return configure, fixed, rename


# pi0 (runners/importers/lerobot_pi0.py: LeRobot 0.4's openpi port; sizes from the weights; tokens are inputs) --
def _pi0():
    from . import lerobot_pi0

    return lerobot_pi0


# pi0.5 (runners/importers/lerobot_pi05.py: pi0's reading with pi0.5's expert, prompt and tokenizer settings) -----
def _pi05():
    from . import lerobot_pi05

    return lerobot_pi05


# SmolVLA (runners/importers/lerobot_smolvla.py: the VLM's config and tokenizer, expert sizes from the weights) ---
def _smolvla():
    from . import lerobot_smolvla

    return lerobot_smolvla


_configure_pi0, _pi0_fixed, _pi0_key = _delegated(_pi0, "tensor")
_configure_smolvla, _smolvla_fixed, _smolvla_key = _delegated(_smolvla, "field")
_configure_pi05, _pi05_fixed, _pi05_key = _delegated(_pi05, "tensor")


POLICIES = {
    "act": PolicyType("act", "lerobot/act", ACT_KEYS, _configure_act, _act_fixed),
    "diffusion": PolicyType("diffusion", "lerobot/diffusion", (), _configure_diffusion, _diffusion_fixed,
                            rename=_diffusion_key),
    "pi0": PolicyType("pi0", "lerobot/pi0", (), _configure_pi0, _pi0_fixed, rename=_pi0_key),
    "pi05": PolicyType("pi05", "lerobot/pi05", (), _configure_pi05, _pi05_fixed, rename=_pi05_key),
    "smolvla": PolicyType("smolvla", "lerobot/smolvla", (), _configure_smolvla, _smolvla_fixed, rename=_smolvla_key),
}


# reading a pretrained folder -------------------------------------------------------------------
def pretrained_folder(src) -> Path:
    from ... import hub

    path = Path(src)
    if not path.exists():
        try:
            path = hub.resolve(str(src))
        except hub.HubError as e:
            raise LeRobotImportError(str(e)) from None
    if not path.is_dir():
        raise LeRobotImportError(f"{src}: not a folder (a LeRobot policy saved with save_pretrained, or a Hub id)")
    return path


def read_config(folder: Path) -> tuple[Path, dict]:
    path = folder / "config.json"
    if not path.is_file():
        raise LeRobotImportError(f"{folder}: no config.json (not a LeRobot policy saved with save_pretrained)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LeRobotImportError(f"{path}: not JSON ({e})") from None
    kind = cfg.get("type")
    if kind not in POLICIES:
        known = "a LeRobot policy type" if kind in LEROBOT_POLICIES else "not a LeRobot policy type"
        raise LeRobotImportError(f"{path}: type '{kind}' ({known}) cannot be imported; supported: "
                                 f"{', '.join(sorted(POLICIES))}")
    return path, cfg


PREPROCESSOR, POSTPROCESSOR = "policy_preprocessor.json", "policy_postprocessor.json"
# the processor steps a 0.4+ save may hold, by registry name; any other is refused by name
PRE_STEPS = ("rename_observations_processor", "to_batch_processor", "device_processor", "normalizer_processor")
POST_STEPS = ("unnormalizer_processor", "device_processor")
# steps a policy's preprocessor may add (read by its importer, not run: pi0's tokens are graph inputs)
POLICY_PRE_STEPS = {"pi0": ("pi0_new_line_processor", "tokenizer_processor", "relative_actions_processor"),
                    "pi05": ("pi05_prepare_state_tokenizer_processor_step", "tokenizer_processor",
                             "relative_actions_processor"),
                    "smolvla": ("smolvla_new_line_processor", "tokenizer_processor")}
STAT_NAMES = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
              "QUANTILE10": ("q10", "q90")}


def check_version(folder: Path) -> str:
    """'0.3' (statistics inside model.safetensors) or '0.4' (policy_preprocessor.json /
    policy_postprocessor.json and their normalizer step files)."""
    if not (folder / "model.safetensors").is_file():
        raise LeRobotImportError(f"{folder}: no model.safetensors")
    pre, post = (folder / PREPROCESSOR).is_file(), (folder / POSTPROCESSOR).is_file()
    if pre != post:
        raise LeRobotImportError(f"{folder}: {PREPROCESSOR if pre else POSTPROCESSOR} without "
                                 f"{POSTPROCESSOR if pre else PREPROCESSOR} (a LeRobot 0.4+ save has both)")
    return "0.4" if pre else "0.3"


def features_of(cfg: dict, path: Path) -> dict:
    """Cameras (in config order), their shape [C, H, W], the state / environment / action widths."""
    inputs, outputs = cfg.get("input_features") or {}, cfg.get("output_features") or {}
    # pi0's empty cameras (images of -1 LeRobot adds for them) are masked out of every attention: left out
    empty = {f"{IMAGE_PREFIX}empty_camera_{i}" for i in range(int(cfg.get("empty_cameras") or 0))} \
        if cfg.get("type") in ("pi0", "pi05") else set()
    cameras = [k for k, f in inputs.items() if f.get("type") == "VISUAL" and k not in empty]
    shapes = {tuple(inputs[k]["shape"]) for k in cameras}
    if len(shapes) > 1:
        raise LeRobotImportError(f"{path}: input_features: the cameras have different shapes {sorted(shapes)}")
    bad = [k for k in cameras if not (k.startswith(IMAGE_PREFIX) or k == SINGLE_IMAGE_KEY)]
    if bad:
        raise LeRobotImportError(f"{path}: input_features: camera keys {bad} do not start with '{IMAGE_PREFIX}' "
                                 f"(nor are '{SINGLE_IMAGE_KEY}')")
    other = [k for k, f in inputs.items() if f.get("type") != "VISUAL" and k not in (STATE_KEY, ENV_KEY)]
    if other:
        raise LeRobotImportError(f"{path}: input_features {other} are not supported")
    if ACTION_KEY not in outputs or set(outputs) != {ACTION_KEY}:
        raise LeRobotImportError(f"{path}: output_features must be exactly '{ACTION_KEY}', got {sorted(outputs)}")
    image = list(shapes.pop()) if shapes else None
    if image is not None and (len(image) != 3 or image[0] != 3):
        raise LeRobotImportError(f"{path}: input_features: cameras of shape {image}, expected [3, H, W]")
    width = lambda k, d: int(d[k]["shape"][0]) if k in d else 0  # noqa: E731
    return {"cameras": cameras, "image": image, "state": width(STATE_KEY, inputs), "env_state": width(ENV_KEY, inputs),
            "action": width(ACTION_KEY, outputs),
            "horizon": int(cfg.get("chunk_size", 0) or cfg.get("horizon", 0) or 0)}  # ACT: chunk_size; diffusion: horizon


def _buffer(key: str) -> str:
    return "buffer_" + key.replace(".", "_")


def _norm_mode(kind: str, mapping: dict, path: Path, field: str = "normalization_mapping") -> str:
    m = mapping.get(kind, "IDENTITY")
    if m != "IDENTITY" and m not in STAT_NAMES:
        raise LeRobotImportError(f"{path}: {field}.{kind} '{m}' is not supported ({', '.join(['IDENTITY', *STAT_NAMES])})")
    return m


def statistics_03(state: dict, cfg: dict, features: dict, path: Path) -> tuple[dict, dict]:
    """({'inputs' | 'targets' | 'outputs': {feature: {stat: tensor}}}, norm_map) from a 0.3.x save's
    normalization buffers, which are taken out of `state`."""
    weights = path.parent / "model.safetensors"
    mapping = cfg.get("normalization_mapping") or {}
    kinds = {**{c: "VISUAL" for c in features["cameras"]}, STATE_KEY: "STATE", ENV_KEY: "ENV", ACTION_KEY: "ACTION"}
    present = {STATE_KEY: features["state"], ENV_KEY: features["env_state"]}
    modules = {"inputs": ("normalize_inputs", [k for k in kinds if k != ACTION_KEY and present.get(k, True)]),
               "targets": ("normalize_targets", [ACTION_KEY]), "outputs": ("unnormalize_outputs", [ACTION_KEY])}
    source = {}
    for role, (module, keys) in modules.items():
        source[role] = {}
        for key in keys:
            mode = _norm_mode(kinds[key], mapping, path)
            if mode == "IDENTITY":
                continue
            source[role][key] = {}
            for n in STAT_NAMES[mode]:
                full = f"{module}.{_buffer(key)}.{n}"
                if full not in state:
                    raise LeRobotImportError(f"{weights}: '{full}' missing ({kinds[key]} is {mode} in normalization_mapping)")
                source[role][key][n] = state.pop(full).float()
    left = sorted(k for k in state if k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")))
    if left:
        raise LeRobotImportError(f"{weights}: normalization buffers of features the config does not normalize: {left[:4]}")
    return source, mapping


def _processor(folder: Path, name: str, allowed: tuple) -> tuple[Path, list]:
    path = folder / name
    try:
        steps = json.loads(path.read_text()).get("steps")
    except (json.JSONDecodeError, AttributeError) as e:
        raise LeRobotImportError(f"{path}: not a LeRobot processor pipeline ({e})") from None
    if not isinstance(steps, list):
        raise LeRobotImportError(f"{path}: no 'steps' list")
    for i, step in enumerate(steps):
        reg = step.get("registry_name") if isinstance(step, dict) else None
        if reg not in allowed:
            raise LeRobotImportError(f"{path}: steps[{i}] '{reg}' is not supported (supported: {', '.join(allowed)})")
    return path, steps


def _step_state(folder: Path, path: Path, i: int, step: dict) -> dict:
    from safetensors.torch import load_file

    name = step.get("state_file")
    if not name or not (folder / name).is_file():
        raise LeRobotImportError(f"{path}: steps[{i}] '{step['registry_name']}': its state_file '{name}' is missing")
    return load_file(str(folder / name))


@dataclass(frozen=True)
class Preprocessor:
    """What a 0.4+ save's policy_preprocessor.json holds, read once (statistics_04) and handed on: its steps
    (a policy's importer reads its own, e.g. pi0's tokenizer_processor) and the rename_map (client key ->
    feature key). A 0.3.x save has none: empty."""
    steps: list = field(default_factory=list)
    rename: dict = field(default_factory=dict)


def statistics_04(folder: Path, cfg: dict, features: dict, path: Path) -> tuple[dict, dict, Preprocessor]:
    """(the same sources as statistics_03, norm_map, the preprocessor) from a 0.4+ save's processor files."""
    pre_path, pre = _processor(folder, PREPROCESSOR, PRE_STEPS + POLICY_PRE_STEPS.get(cfg.get("type"), ()))
    post_path, post = _processor(folder, POSTPROCESSOR, POST_STEPS)
    rename, norm, unnorm = {}, None, None
    for i, step in enumerate(pre):
        if step["registry_name"] == "rename_observations_processor":
            rename.update((step.get("config") or {}).get("rename_map") or {})
        elif step["registry_name"] == "normalizer_processor":
            if norm is not None:
                raise LeRobotImportError(f"{pre_path}: more than one normalizer_processor step")
            norm = (i, step, _step_state(folder, pre_path, i, step))
    for i, step in enumerate(post):
        if step["registry_name"] == "unnormalizer_processor":
            if unnorm is not None:
                raise LeRobotImportError(f"{post_path}: more than one unnormalizer_processor step")
            unnorm = (i, step, _step_state(folder, post_path, i, step))
    if norm is None or unnorm is None:
        raise LeRobotImportError(f"{pre_path if norm is None else post_path}: no "
                                 f"{'normalizer' if norm is None else 'unnormalizer'}_processor step")
    mapping = (norm[1].get("config") or {}).get("norm_map") or {}
    if mapping != ((unnorm[1].get("config") or {}).get("norm_map") or {}):
        raise LeRobotImportError(f"{post_path}: the unnormalizer's norm_map differs from {pre_path.name}'s")
    kinds = {**{c: "VISUAL" for c in features["cameras"]}, STATE_KEY: "STATE", ENV_KEY: "ENV", ACTION_KEY: "ACTION"}
    present = {STATE_KEY: features["state"], ENV_KEY: features["env_state"]}

    def collect(where, tensors, keys, file):
        out = {}
        for key in keys:
            mode = _norm_mode(kinds[key], mapping, where, "norm_map")
            if mode == "IDENTITY":
                continue
            missing = [f"{key}.{n}" for n in STAT_NAMES[mode] if f"{key}.{n}" not in tensors]
            if missing:
                raise LeRobotImportError(f"{folder / file}: {missing} missing ({kinds[key]} is {mode})")
            out[key] = {n: tensors[f"{key}.{n}"].float() for n in STAT_NAMES[mode]}
        return out

    inputs = [k for k in kinds if k != ACTION_KEY and present.get(k, True)]
    source = {"inputs": collect(pre_path, norm[2], inputs, norm[1]["state_file"]),
              "targets": collect(pre_path, norm[2], [ACTION_KEY], norm[1]["state_file"]),
              "outputs": collect(post_path, unnorm[2], [ACTION_KEY], unnorm[1]["state_file"])}
    return source, mapping, Preprocessor(pre, rename)


def read_statistics(source: dict, mapping: dict, features: dict, path: Path) -> tuple[dict, dict, list]:
    """(statistics per port, modes per port, image normalization per camera (mean, std) lists) from the
    normalization sources (statistics_03 / statistics_04). Numbers must be finite; the action statistics
    that normalize targets and those that un-normalize outputs must be equal."""
    import torch

    def finite(key, stats):
        for n, t in stats.items():
            if not torch.isfinite(t).all():
                raise LeRobotImportError(f"{path.parent}: the {key} {n} statistics are not finite: the policy was "
                                         "saved without dataset statistics")
        return stats

    def port_stats(key, stats):
        mode = _norm_mode({STATE_KEY: "STATE", ENV_KEY: "ENV", ACTION_KEY: "ACTION"}[key], mapping, path)
        flat = {n: t.reshape(-1).tolist() for n, t in finite(key, stats).items()}
        if mode == "MEAN_STD":
            return "mean_std", flat
        if mode == "QUANTILES":
            return "q01_q99", flat
        lo, hi = STAT_NAMES[mode]  # MIN_MAX, and QUANTILE10 as min_max over [q10, q90] (the same map)
        return "min_max", {"min": flat[lo], "max": flat[hi]}

    stats, modes = {}, {}
    for key in (STATE_KEY, ENV_KEY):
        if features["state" if key == STATE_KEY else "env_state"]:
            modes[PORTS[key]] = "identity"
            if key in source["inputs"]:
                modes[PORTS[key]], stats[PORTS[key]] = port_stats(key, source["inputs"][key])
    modes["actions"] = "identity"
    if ACTION_KEY in source["outputs"] or ACTION_KEY in source["targets"]:
        target, output = source["targets"].get(ACTION_KEY) or {}, source["outputs"].get(ACTION_KEY) or {}
        for n in set(target) | set(output):
            if n not in target or n not in output or not torch.equal(target[n], output[n]):
                raise LeRobotImportError(f"{path.parent}: the action {n} statistics that normalize training targets "
                                         "differ from those that un-normalize the actions")
        modes["actions"], stats["actions"] = port_stats(ACTION_KEY, output)
    images = []
    vmode = _norm_mode("VISUAL", mapping, path)
    for cam in features["cameras"]:
        if cam not in source["inputs"]:
            images.append(([0.0] * 3, [1.0] * 3))
            continue
        s = finite(cam, source["inputs"][cam])
        if vmode == "MEAN_STD":
            images.append((s["mean"].reshape(-1).tolist(), s["std"].reshape(-1).tolist()))
        else:  # (x - lo) / (hi - lo) * 2 - 1 == (x - (lo + hi) / 2) / ((hi - lo) / 2)
            lo, hi = (s[n].reshape(-1) for n in STAT_NAMES[vmode])
            images.append((((lo + hi) / 2).tolist(), ((hi - lo) / 2).tolist()))
    return stats, modes, images


def normalization_of(folder: Path, version: str, state: dict, cfg: dict, features: dict, cfg_path: Path):
    """(statistics, modes, image normalization, Preprocessor) of a save of either format; a 0.3.x save's
    normalization buffers are taken out of `state`."""
    if version == "0.3":
        source, mapping = statistics_03(state, cfg, features, cfg_path)
        pre = Preprocessor()
    else:
        source, mapping, pre = statistics_04(folder, cfg, features, cfg_path)
        stray = sorted(k for k in state if k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")))
        if stray:
            raise LeRobotImportError(f"{folder / 'model.safetensors'}: normalization buffers {stray[:3]} beside processor "
                                     "files: a save mixing LeRobot formats")
    return (*read_statistics(source, mapping, features, cfg_path), pre)


def build_spec(policy: PolicyType, cfg: dict, cfg_path: Path, features: dict, images: list, modes: dict,
               pre: Preprocessor | None = None) -> dict:
    """The packaged graph of `policy` with the pretrained policy's sizes, options and image statistics;
    `pre` (a 0.4+ save's Preprocessor, from normalization_of) gives the policy's importer the preprocessor's
    steps, and its rename_map (client key -> feature key) renames the served keys."""
    pre = pre or Preprocessor()
    from ...spec.loader import load_spec

    spec = copy.deepcopy(load_spec(policy.graph).data)
    spec.pop("extends", None)
    h, a = features["horizon"], features["action"]
    if h < 1:
        raise LeRobotImportError(f"{cfg_path}: chunk_size must be a positive integer, got {cfg.get('chunk_size')}")
    spec["inputs"]["actions"].update(dim=a, horizon=h)
    spec["inputs"]["actions_mask"]["shape"] = [h]
    head_in = spec["blocks"]["head"]["in"]
    key_map = {}
    if features["cameras"]:
        spec["inputs"]["images"].update(views=len(features["cameras"]), size=features["image"][1:])
        spec["blocks"]["backbone"]["with"]["normalize"] = {"mean": [m for m, _ in images], "std": [s for _, s in images]}
        key_map.update({cam: f"images[{i}]" for i, cam in enumerate(features["cameras"])})
    else:
        spec["inputs"].pop("images", None)
        spec["blocks"].pop("backbone", None)
        head_in.pop("features", None)
    if features["state"]:
        spec["inputs"]["state"]["dim"] = features["state"]
        key_map[STATE_KEY] = "state"
    else:
        spec["inputs"].pop("state", None)
        head_in.pop("state", None)
    if features["env_state"]:  # simulator state: a privileged port (results labelled as such)
        spec["inputs"]["env_state"] = {"kind": "state", "dim": features["env_state"], "privileged": True}
        head_in["env_state"] = "inputs.env_state"
        key_map[ENV_KEY] = "env_state"
    spec["trainer"]["normalization"] = {p: m for p, m in modes.items() if p in spec["inputs"]}
    key_map = policy.configure(spec, cfg, features, cfg_path, pre.steps) or key_map  # a policy may serve other keys (diffusion's window)
    for sent, feature in pre.rename.items():  # the client sends `sent`, which LeRobot renames to `feature`
        if feature in key_map and sent != feature:
            key_map[sent] = key_map.pop(feature)
    steps = int(cfg.get("n_action_steps", h) or h)
    if (spec.get("infer") or {}).get("temporal_ensemble"):
        steps = 1  # queried every step, the ensemble's action executed
    spec["serve"] = {**(spec.get("serve") or {}), "key_map": key_map, "execute_steps": steps}
    spec["name"] = f"{spec['name']}-imported"
    spec["description"] = f"LeRobot {policy.name} imported from {cfg_path.parent} (graph {policy.graph})"
    return spec


def graph_key(key: str, policy: str = "act") -> str | None:
    """LeRobot's state_dict key -> the graph's (None: not a weight of the graph, e.g. a fixed table)."""
    if POLICIES[policy].rename is not None:
        return POLICIES[policy].rename(key)
    for theirs, ours in POLICIES[policy].key_prefixes:
        if key == theirs or (theirs.endswith(".") and key.startswith(theirs)):
            if ours is None:
                return None
            name = ours + key[len(theirs):]
            return _act_key(name) if policy == "act" else name
    return ""


def map_weights(state: dict, expected: dict, fixed: dict, weights_path: Path, policy: PolicyType) -> dict:
    """LeRobot's tensors under the graph's names, each checked: no unknown, extra, missing or misshapen key;
    fixed tables (not weights) checked against the graph's own."""
    mapped, unknown = {}, []
    for key, tensor in state.items():
        name = graph_key(key, policy.name)
        if name is None:
            if key not in fixed:
                unknown.append(key)
            elif policy.fixed is not None:
                policy.fixed(key, fixed[key], tensor)
            continue
        if name not in expected:
            unknown.append(key)
            continue
        mapped[name] = fitted(key, tensor, name, expected[name], weights_path, LeRobotImportError)
    if unknown:
        raise LeRobotImportError(f"{weights_path}: {len(unknown)} tensor(s) the graph has no place for: "
                                 + listed(sorted(unknown)))
    missing = sorted(k for k in expected if k not in mapped)
    if missing:
        raise LeRobotImportError(f"{weights_path}: {len(missing)} tensor(s) of graph {policy.graph} missing: "
                                 + listed(missing))
    return mapped


def fixed_tables(cg, policy: PolicyType) -> dict:
    """LeRobot key -> the graph's value of a saved table that is not a weight (ACT's CVAE positions)."""
    if policy.name == "act":
        pos = _act_vae_pos(cg)
        return {} if pos is None else {"model.vae_encoder_pos_enc": pos}
    if policy.name == "diffusion":
        from . import lerobot_diffusion

        return lerobot_diffusion.fixed_tables(cg)
    if policy.name == "pi0":
        from . import lerobot_pi0

        return lerobot_pi0.fixed_tables(cg)
    if policy.name == "pi05":
        from . import lerobot_pi05

        return lerobot_pi05.fixed_tables(cg)
    if policy.name == "smolvla":
        from . import lerobot_smolvla

        return lerobot_smolvla.fixed_tables(cg)
    return {}


PATCH_POSITIONS = ("index", "shifted")


def import_lerobot(src, out, patch_positions: str | None = None) -> Path:
    """Write GraphVLA run `out` from LeRobot pretrained folder (or Hub id) `src`; returns `out`. Raises
    LeRobotImportError (a ValueError) naming the file and key of what does not fit; nothing is left
    at `out` then. `patch_positions` (SmolVLA only): the SigLIP patch positions of the transformers the
    policy ran with, instead of the save format's guess (0.3.x: index; 0.4+: shifted, LeRobot 0.4.x's
    transformers 4.57); a LeRobot 0.5.x save (transformers 5) needs index, and its files do not say so."""
    from safetensors.torch import load_file, save_file

    from ...blocks.base import parameters_on_meta
    from ...compiler.compile import compile_graph
    from ...data.normalize import Normalizer
    from ...policy import checkpoint as C
    from ...spec.loader import load_spec

    out = Path(out)
    if out.exists():
        raise LeRobotImportError(f"{out}: already exists (the import writes a new run folder)")
    folder = pretrained_folder(src)
    cfg_path, cfg = read_config(folder)
    version = check_version(folder)
    policy = POLICIES[cfg["type"]]
    features = features_of(cfg, cfg_path)
    weights_path = folder / "model.safetensors"
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # a truncated or foreign file
        raise LeRobotImportError(f"{weights_path}: cannot read it as safetensors ({type(e).__name__}: {e})") from None
    stats, modes, images, pre = normalization_of(folder, version, state, cfg, features, cfg_path)
    spec_data = build_spec(policy, cfg, cfg_path, features, images, modes, pre)
    if patch_positions is not None:
        if policy.name != "smolvla":
            raise LeRobotImportError(f"patch_positions is SmolVLA's option; {cfg_path} is a '{policy.name}' policy")
        if patch_positions not in PATCH_POSITIONS:
            raise LeRobotImportError(f"patch_positions '{patch_positions}' is not one of {', '.join(PATCH_POSITIONS)}")
        spec_data["blocks"]["backbone"]["with"]["patch_positions"] = patch_positions
    why = lerobot_versions.check_fields(cfg, policy.name)  # after the policy's own refusals, which say more
    if why:
        raise LeRobotImportError(f"{cfg_path}: {why}")

    with tempfile.TemporaryDirectory(prefix="graphvla-import-") as scratch:
        spec_file = Path(scratch) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec_data, sort_keys=False))
        spec = load_spec(str(spec_file))
        with parameters_on_meta():
            cg = compile_graph(spec, device="cpu")
        mapped = map_weights(state, cg.model.state_dict(), fixed_tables(cg, policy), weights_path, policy)
        stats = {p: s for p, s in stats.items() if p in spec_data["inputs"]}
        modes = {p: m for p, m in modes.items() if p in stats}
        preprocess, postprocess = cg.bound_pipelines(stats or None, modes or None)
        norm = Normalizer(stats, modes).to_dict() if stats else None
        spec.file = None

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f"{TMP_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            def write(d: Path):
                C.write_policy_files(d, spec, preprocess, postprocess, None if norm is None else json.loads(json.dumps(norm)))
                names = C.untied_names(cg.model)
                save_file({n: mapped[n] for n in names}, str(d / "model.safetensors"), metadata={"format": "pt"})

            C.write_checkpoint(tmp, 0, write)
            C.write_json(tmp / "imported.json", {
                "from": "LeRobot", "policy": policy.name, "format": version, "graph": policy.graph,
                "source": str(src), "folder": str(folder.resolve()), "config": str(cfg_path.resolve()),
                "weights": str(weights_path.resolve()), "weights_sha256": sha256_of(weights_path),
                "tensors": len(mapped), "cameras": features["cameras"],
                "normalization": modes, "key_map": spec_data["serve"]["key_map"],
                **({"patch_positions": spec_data["blocks"]["backbone"]["with"]["patch_positions"]}
                   if policy.name == "smolvla" else {})})
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out
