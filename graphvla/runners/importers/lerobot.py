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

LeRobot 0.4 and later save the statistics in policy_preprocessor.json / policy_postprocessor.json
and their step files instead; such a folder is refused by name (not supported yet).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ...fileio import TMP_PREFIX, sha256_of

# the policy types LeRobot registers (0.3.2 and 0.4.x); those without a POLICIES entry are refused by name
LEROBOT_POLICIES = ("act", "diffusion", "groot", "pi0", "pi05", "pi0fast", "reward_classifier", "sac", "smolvla",
                    "tdmpc", "vqbet", "xvla")
IMAGE_PREFIX = "observation.images."
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
    configure: Callable  # (spec, config, features, config_path) -> None: the policy's own fields into the spec
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


def _configure_act(spec: dict, cfg: dict, features: dict, path: Path) -> None:
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
def _configure_diffusion(spec: dict, cfg: dict, features: dict, path: Path) -> dict:
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


POLICIES = {
    "act": PolicyType("act", "lerobot/act", ACT_KEYS, _configure_act, _act_fixed),
    "diffusion": PolicyType("diffusion", "lerobot/diffusion", (), _configure_diffusion, _diffusion_fixed,
                            rename=_diffusion_key),
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


def check_version(folder: Path) -> str:
    """'0.3': statistics inside model.safetensors. 0.4 and later (processor files) are refused by name."""
    processors = sorted(p.name for p in folder.glob("policy_*processor*.json"))
    if processors:
        raise LeRobotImportError(f"{folder}: a LeRobot 0.4+ save ({', '.join(processors)}: statistics in processor "
                                 "files) is not supported yet; GraphVLA imports LeRobot 0.3.x saves (statistics "
                                 "inside model.safetensors)")
    if not (folder / "model.safetensors").is_file():
        raise LeRobotImportError(f"{folder}: no model.safetensors")
    return "0.3"


def features_of(cfg: dict, path: Path) -> dict:
    """Cameras (in config order), their shape [C, H, W], the state / environment / action widths."""
    inputs, outputs = cfg.get("input_features") or {}, cfg.get("output_features") or {}
    cameras = [k for k, f in inputs.items() if f.get("type") == "VISUAL"]
    shapes = {tuple(inputs[k]["shape"]) for k in cameras}
    if len(shapes) > 1:
        raise LeRobotImportError(f"{path}: input_features: the cameras have different shapes {sorted(shapes)}")
    bad = [k for k in cameras if not k.startswith(IMAGE_PREFIX)]
    if bad:
        raise LeRobotImportError(f"{path}: input_features: camera keys {bad} do not start with '{IMAGE_PREFIX}'")
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


def read_statistics(state: dict, cfg: dict, features: dict, path: Path) -> tuple[dict, dict, dict]:
    """(statistics per port, modes per port, image normalization per camera {mean, std} lists) from the
    normalization buffers of a 0.3.x save; all buffers are consumed from `state`."""
    import torch

    mapping = cfg.get("normalization_mapping") or {}
    kinds = {STATE_KEY: "STATE", ENV_KEY: "ENV", ACTION_KEY: "ACTION"}

    def mode_of(kind: str) -> str:
        m = mapping.get(kind, "IDENTITY")
        if m not in MODES:
            raise LeRobotImportError(f"{path}: normalization_mapping.{kind} '{m}' is not one of {', '.join(MODES)}")
        return MODES[m]

    def take(module: str, key: str, mode: str) -> dict:
        names = ("mean", "std") if mode == "mean_std" else ("min", "max")
        out = {}
        for n in names:
            full = f"{module}.{_buffer(key)}.{n}"
            if full not in state:
                raise LeRobotImportError(f"{path.parent / 'model.safetensors'}: '{full}' missing ({kinds.get(key, 'VISUAL')} "
                                         f"is {mode.upper()} in normalization_mapping)")
            t = state.pop(full).float()
            if not torch.isfinite(t).all():
                raise LeRobotImportError(f"{path.parent / 'model.safetensors'}: '{full}' is not finite: the policy was "
                                         "saved without dataset statistics")
            out[n] = t
        return out

    stats, modes, images = {}, {}, []
    for key in (STATE_KEY, ENV_KEY):
        if features["state" if key == STATE_KEY else "env_state"]:
            mode = mode_of(kinds[key])
            modes[PORTS[key]] = mode
            if mode != "identity":
                stats[PORTS[key]] = {k: v.reshape(-1).tolist() for k, v in take("normalize_inputs", key, mode).items()}
    mode = mode_of("ACTION")
    modes["actions"] = mode
    if mode != "identity":
        target = take("normalize_targets", ACTION_KEY, mode)
        output = take("unnormalize_outputs", ACTION_KEY, mode)
        for n in target:
            if not torch.equal(target[n], output[n]):
                raise LeRobotImportError(f"{path.parent / 'model.safetensors'}: normalize_targets and unnormalize_outputs "
                                         f"hold different action {n} statistics")
        stats["actions"] = {k: v.reshape(-1).tolist() for k, v in output.items()}
    vmode = mode_of("VISUAL")
    for cam in features["cameras"]:
        if vmode == "identity":
            images.append(([0.0] * 3, [1.0] * 3))
            continue
        s = take("normalize_inputs", cam, vmode)
        if vmode == "mean_std":
            images.append((s["mean"].reshape(-1).tolist(), s["std"].reshape(-1).tolist()))
        else:  # (x - min) / (max - min) * 2 - 1 == (x - (min + max) / 2) / ((max - min) / 2)
            lo, hi = s["min"].reshape(-1), s["max"].reshape(-1)
            images.append((((lo + hi) / 2).tolist(), ((hi - lo) / 2).tolist()))
    left = sorted(k for k in state if k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")))
    if left:
        raise LeRobotImportError(f"{path.parent / 'model.safetensors'}: normalization buffers of features the config "
                                 f"does not normalize: {left[:4]}")
    return stats, modes, images


def build_spec(policy: PolicyType, cfg: dict, cfg_path: Path, features: dict, images: list, modes: dict) -> dict:
    """The packaged graph of `policy` with the pretrained policy's sizes, options and image statistics."""
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
    key_map = policy.configure(spec, cfg, features, cfg_path) or key_map  # a policy may serve other keys (diffusion's window)
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
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise LeRobotImportError(f"{weights_path}: '{key}' has shape {list(tensor.shape)}, the graph's {name} "
                                     f"needs {list(want.shape)}")
        mapped[name] = tensor.to(want.dtype).contiguous()
    if unknown:
        raise LeRobotImportError(f"{weights_path}: {len(unknown)} tensor(s) the graph has no place for: "
                                 + ", ".join(sorted(unknown)[:8]) + (" ..." if len(unknown) > 8 else ""))
    missing = sorted(k for k in expected if k not in mapped)
    if missing:
        raise LeRobotImportError(f"{weights_path}: {len(missing)} tensor(s) of graph {policy.graph} missing: "
                                 + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    return mapped


def fixed_tables(cg, policy: PolicyType) -> dict:
    """LeRobot key -> the graph's value of a saved table that is not a weight (ACT's CVAE positions)."""
    if policy.name == "act":
        pos = _act_vae_pos(cg)
        return {} if pos is None else {"model.vae_encoder_pos_enc": pos}
    if policy.name == "diffusion":
        from . import lerobot_diffusion

        return lerobot_diffusion.fixed_tables(cg)
    return {}


def import_lerobot(src, out) -> Path:
    """Write GraphVLA run `out` from LeRobot pretrained folder (or Hub id) `src`; returns `out`. Raises
    LeRobotImportError (a ValueError) naming the file and key of what does not fit; nothing is left
    at `out` then."""
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
    stats, modes, images = read_statistics(state, cfg, features, cfg_path)
    spec_data = build_spec(policy, cfg, cfg_path, features, images, modes)

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
                "normalization": modes, "key_map": spec_data["serve"]["key_map"]})
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out
