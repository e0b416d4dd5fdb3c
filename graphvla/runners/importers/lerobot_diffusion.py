"""LeRobot's Diffusion Policy (policy type "diffusion") as graphs/lerobot/diffusion.yaml: its
state_dict names mapped to the graph's, and its config.json turned into the graph's sizes. Used by
the LeRobot importer (runners/importers/lerobot.py) and by tests/test_lerobot_diffusion.py, so the
mapping that imports a checkpoint is the one the parity fixture proves.

Names (LeRobot -> graph):
  diffusion.rgb_encoder[.C].backbone.{0,1,4,5,6,7}...  backbone.encoders.C.trunk.{conv1,bn1,layer1..4}...
  diffusion.rgb_encoder[.C].pool.nets.*                 backbone.encoders.C.keypoints.proj.*
  diffusion.rgb_encoder[.C].out.*                       backbone.encoders.C.out.*
  diffusion.unet.diffusion_step_encoder.{1,3}.*         head.unet.time_mlp.{0,2}.*
  diffusion.unet.{down,up}_modules.I.{0,1,2}.*          head.unet.{down,up}.I.{res1,res2,resample}.*
  diffusion.unet.mid_modules.J.*                        head.unet.mid.J.*
  diffusion.unet.final_conv.{0,1}.*                     head.unet.{out_block,out_proj}.*
  in a residual block: conv{1,2}.block.{0,1} -> conv{1,2}.{conv,norm}, cond_encoder.1 -> film,
  residual_conv -> shortcut
The spatial-softmax grids (rgb_encoder[.C].pool.pos_grid) are not parameters: the graph computes
them from the feature-map size; `GRID_KEY` finds them so an import compares them instead.
"""
from __future__ import annotations

import re

BACKBONE = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
RESIDUAL = [("conv1.block.0.", "conv1.conv."), ("conv1.block.1.", "conv1.norm."), ("conv2.block.0.", "conv2.conv."),
            ("conv2.block.1.", "conv2.norm."), ("cond_encoder.1.", "film."), ("residual_conv.", "shortcut.")]
LEVEL_PART = {"0": "res1", "1": "res2", "2": "resample"}
ENCODER = re.compile(r"^diffusion\.rgb_encoder\.(?:(\d+)\.)?(backbone|pool\.nets|out)\.(.+)$")
GRID_KEY = re.compile(r"^diffusion\.rgb_encoder\.(?:(\d+)\.)?pool\.pos_grid$")
UNET = "diffusion.unet."


def _residual(rest: str) -> str | None:
    for old, new in RESIDUAL:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def graph_key(key: str, encoder: str = "backbone", head: str = "head") -> str | None:
    """The graph's name for LeRobot's parameter `key`; None for a name this mapping does not know."""
    m = ENCODER.match(key)
    if m:
        camera, part, rest = m.group(1) or "0", m.group(2), m.group(3)
        prefix = f"{encoder}.encoders.{camera}."
        if part == "pool.nets":
            return prefix + "keypoints.proj." + rest
        if part == "out":
            return prefix + "out." + rest
        index, _, tail = rest.partition(".")
        return prefix + "trunk." + BACKBONE[index] + "." + tail if index in BACKBONE and tail else None
    if not key.startswith(UNET):
        return None
    rest = key[len(UNET):]
    out = f"{head}.unet."
    m = re.match(r"^diffusion_step_encoder\.([13])\.(weight|bias)$", rest)
    if m:
        return out + f"time_mlp.{int(m.group(1)) - 1}.{m.group(2)}"
    m = re.match(r"^(down|up)_modules\.(\d+)\.([012])\.(.+)$", rest)
    if m:
        side, i, part, tail = m.groups()
        if part == "2":
            return out + f"{side}.{i}.resample.{tail}" if tail in ("weight", "bias") else None
        res = _residual(tail)
        return out + f"{side}.{i}.{LEVEL_PART[part]}.{res}" if res else None
    m = re.match(r"^mid_modules\.(\d+)\.(.+)$", rest)
    if m:
        res = _residual(m.group(2))
        return out + f"mid.{m.group(1)}.{res}" if res else None
    m = re.match(r"^final_conv\.0\.block\.([01])\.(weight|bias)$", rest)
    if m:
        return out + ("out_block.conv." if m.group(1) == "0" else "out_block.norm.") + m.group(2)
    m = re.match(r"^final_conv\.1\.(weight|bias)$", rest)
    if m:
        return out + "out_proj." + m.group(1)
    return None


def spec_with(config: dict) -> dict:
    """The `with:` of the graph's two blocks and the port sizes for a LeRobot DiffusionConfig (as its
    config.json holds it): {"backbone": {...}, "head": {...}, "images": (cameras, C, H, W) or None,
    "state_dim", "env_dim", "action_dim", "n_obs_steps", "horizon"}. A setting the graph does not
    have is a ValueError naming it."""
    def need(name, ok, why):
        if not ok:
            raise ValueError(f"config.json: {name}={config.get(name)!r} is not supported ({why})")

    need("vision_backbone", config.get("vision_backbone", "resnet18") in ("resnet18", "resnet34"),
         "ResNet-18 or ResNet-34 only")
    need("use_group_norm", config.get("use_group_norm", True) in (True, False), "true or false")
    feats = config.get("input_features") or {}
    images = {k: v for k, v in feats.items() if v.get("type") == "VISUAL"}
    shapes = {tuple(v["shape"]) for v in images.values()}
    if len(shapes) > 1:
        raise ValueError(f"config.json: input_features: the cameras' shapes differ ({sorted(shapes)})")
    state = feats.get("observation.state")
    if state is None:
        raise ValueError("config.json: input_features has no observation.state (Diffusion Policy needs it)")
    env = feats.get("observation.environment_state")
    action = (config.get("output_features") or {}).get("action")
    if action is None:
        raise ValueError("config.json: output_features has no action")
    crop = config.get("crop_shape")
    vision = {"cameras": max(len(images), 1), "depth": int(config.get("vision_backbone", "resnet18")[6:]),
              # LeRobot's trunk: torchvision's BatchNorm2d layers, each replaced by GroupNorm(C // 16, C) when
              # use_group_norm (the default up to 0.4.x; 0.6 defaults to false)
              "norm": "group_norm" if config.get("use_group_norm", True) else "batch_norm",
              "keypoints": config["spatial_softmax_num_keypoints"],
              "crop": list(crop) if crop else None, "random_crop": bool(config.get("crop_is_random", True)),
              "separate_encoders": bool(config.get("use_separate_rgb_encoder_per_camera", False))}
    head = {"n_action_steps": config["n_action_steps"], "down_dims": list(config["down_dims"]),
            "kernel_size": config["kernel_size"], "groups": config["n_groups"],
            "step_embed_dim": config["diffusion_step_embed_dim"],
            "film_scale": bool(config["use_film_scale_modulation"]),
            "train_timesteps": config["num_train_timesteps"], "beta_schedule": config["beta_schedule"],
            "beta_start": config["beta_start"], "beta_end": config["beta_end"],
            "prediction": config["prediction_type"], "sampler": config["noise_scheduler_type"],
            "inference_steps": config.get("num_inference_steps"), "clip_sample": bool(config["clip_sample"]),
            "clip_range": config["clip_sample_range"], "mask_padding": bool(config["do_mask_loss_for_padding"])}
    return {"backbone": vision, "head": head, "images": (len(images), *next(iter(shapes))) if images else None,
            "image_keys": list(images), "state_dim": state["shape"][0], "env_dim": env["shape"][0] if env else 0,
            "action_dim": action["shape"][0], "n_obs_steps": config["n_obs_steps"], "horizon": config["horizon"]}


def fit_spec(spec: dict, config: dict) -> dict:
    """graphs/lerobot/diffusion.yaml's spec data (a copy is changed) sized for a LeRobot config: the
    ports, both blocks' `with:`, an env_state port and wire when the policy has one. A policy without
    cameras (environment state only) is refused: the graph's encoder needs images."""
    import copy

    w = spec_with(config)
    spec = copy.deepcopy(spec)
    if w["images"] is None:
        raise ValueError("config.json: input_features has no camera (VISUAL): the graph encodes images")
    cams, c, h, wd = w["images"]
    s = w["n_obs_steps"]
    spec["inputs"]["images"].update(views=s * cams, size=[h, wd], channels=c)
    spec["inputs"]["state"].update(dim=w["state_dim"], history=s)
    spec["inputs"]["actions"].update(dim=w["action_dim"], horizon=w["horizon"])
    spec["inputs"]["actions_mask"]["shape"] = [w["horizon"]]
    spec["blocks"]["backbone"]["with"] = w["backbone"]
    spec["blocks"]["head"]["with"] = w["head"]
    if w["env_dim"]:
        spec["inputs"]["env_state"] = {"kind": "state", "dim": w["env_dim"], "history": s,
                                       "description": "observation.environment_state at the observation steps"}
        spec["blocks"]["head"]["in"]["env_state"] = "inputs.env_state"
    return spec


# the LeRobot importer's entry (runners/importers/lerobot.py POLICIES["diffusion"]) -------------------
def importer_key(key: str) -> str | None:
    """graph_key in the importer's convention: None for a table that is not a weight (the grids),
    '' for a name the graph has no place for."""
    if GRID_KEY.match(key):
        return None
    return graph_key(key) or ""


def configure(spec: dict, config: dict, features: dict) -> dict:
    """The importer's spec (built for the graph's ports by runners/importers/lerobot.build_spec) sized
    and set for this Diffusion Policy; returns the serve key map. With n_obs_steps > 1 the run keeps
    LeRobot's observation queues itself (`infer.observation_window`, policy/window.py): a client
    sends one frame per step under LeRobot's keys, as to select_action. ValueError names a setting the
    graph cannot take."""
    w = spec_with(config)
    steps, cameras = int(w["n_obs_steps"]), features["cameras"]
    key_map = {}
    head = spec["blocks"]["head"]
    head["with"] = w["head"]
    if cameras:
        normalize = spec["blocks"]["backbone"]["with"].get("normalize", "none")
        spec["blocks"]["backbone"]["with"] = {**w["backbone"], "normalize": normalize}
        spec["inputs"]["images"]["views"] = len(cameras) * steps
        key_map.update({cam: f"images[{i}]" for i, cam in enumerate(cameras)})
    else:
        head["in"].pop("context", None)
    if features["state"]:
        spec["inputs"]["state"]["history"] = steps
        key_map["observation.state"] = "state"
    if features["env_state"]:
        spec["inputs"]["env_state"]["history"] = steps
        key_map["observation.environment_state"] = "env_state"
    if steps > 1:
        spec.setdefault("infer", {})["observation_window"] = steps
    trainer = spec.setdefault("trainer", {})
    trainer["lr"] = float(config.get("optimizer_lr", trainer.get("lr", 1e-4)))
    trainer["weight_decay"] = float(config.get("optimizer_weight_decay", trainer.get("weight_decay", 1e-6)))
    if config.get("optimizer_betas"):
        trainer["betas"] = [float(b) for b in config["optimizer_betas"]]
    return key_map


def fixed_tables(cg) -> dict:
    """LeRobot's spatial-softmax grid keys -> the graph's grids (compared on import, not loaded)."""
    enc = cg.model["backbone"] if "backbone" in cg.model else None
    if enc is None:
        return {}
    if not enc.params["separate_encoders"]:
        return {"diffusion.rgb_encoder.pool.pos_grid": enc.encoders[0].keypoints.grid}
    return {f"diffusion.rgb_encoder.{c}.pool.pos_grid": e.keypoints.grid for c, e in enumerate(enc.encoders)}
