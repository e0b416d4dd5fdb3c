"""Parity fixtures from LeRobot's own Diffusion Policy (run OUTSIDE the package, in a side virtual
environment holding a pinned LeRobot: scripts/check_lerobot.sh makes /tmp/lerobot-venvs/lerobot-0.4.1).

For two tiny configurations (`CASES`) this builds LeRobot's DiffusionPolicy, fills its parameters
with a fixed recipe (`recipe_tensor`: a normal draw from a generator seeded by the crc32 of the
parameter's LeRobot name; the ResNet-18 trunks are 11M parameters each, too large to commit, so
the fixture stores the recipe's checksum instead of the weights), runs its training forward
(policy.forward, in train mode) and its sampler (DiffusionModel.generate_actions, in eval mode) on a
fixed batch, and records every random draw LeRobot makes (torch.randn / torch.randint calls: the
training noise and timesteps, the starting noise and DDPM's per-step noise). It writes under
tests/fixtures/lerobot/diffusion/:

  CASE.json            LeRobot's config.json (as save_pretrained writes it), the parameter names and
                       shapes (state_dict order), the recipe's sha256, versions, how the case was made
  CASE.safetensors     inputs (normalized, as DiffusionModel sees them), the recorded draws, the
                       loss, the denoised horizon and the returned actions; LeRobot's spatial-softmax grids

Run with LeRobot 0.3.2 it writes the import case instead (make_import_case: a save_pretrained folder
of a tiny policy with dataset statistics, and LeRobot's actions on raw observations), under import/.

Usage (diffusers 0.35.2 installed with --no-deps in both venvs):
  /tmp/lerobot-venvs/lerobot-0.4.1/bin/python scripts/parity/lerobot_diffusion.py [--out tests/fixtures/lerobot/diffusion]
  /tmp/lerobot-venvs/lerobot-0.3.2/bin/python scripts/parity/lerobot_diffusion.py [--out ...]
  /tmp/lerobot-venvs/lerobot-0.4.1/bin/python scripts/parity/lerobot_diffusion.py --import-04   (after 0.3.2's)
  /tmp/lerobot-venvs/lerobot-X/bin/python scripts/parity/lerobot_diffusion.py --import-04 --dst DIR [--variant batch_norm]
      (any 0.4+: the same policy saved by that version; docs/lerobot.md "Which LeRobot versions")

LeRobot 0.3.2's modeling_diffusion.py differs from 0.4.1's only in where normalization happens
(inside the policy vs. processor files) and in 0.4.1's optional `noise` argument: the network, the
schedulers' use and the loss are the same lines (checked by diff of the two installed files).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
LEROBOT_VERSION = "0.4.1"  # the parity cases
IMPORT_VERSION = "0.3.2"  # the import case: a save with the statistics inside model.safetensors
BATCH = 2
SERVE_SEED = 0  # the session seed the import test serves with (its noise: graphvla/policy/session.py)
# the import case: one camera with observation history (the client sends the n_obs_steps window),
# min/max state and actions, mean/std images, DDIM (its starting noise is its only draw)
IMPORT_CASE = dict(n_obs_steps=2, horizon=8, n_action_steps=4, image=(3, 48, 48), cameras=1, state_dim=3, action_dim=2,
                   env_dim=0, camera_names=["observation.images.top"],
                   # the three settings LeRobot 0.6 changed the defaults of, at 0.3-0.4's values, explicitly
                   config=dict(use_group_norm=True, use_separate_rgb_encoder_per_camera=False,
                               pretrained_backbone_weights=None,
                               crop_shape=(40, 40), crop_is_random=True, spatial_softmax_num_keypoints=4,
                               down_dims=(16, 32), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
                               noise_scheduler_type="DDIM", num_train_timesteps=100, num_inference_steps=10))

# the import case's policy at LeRobot 0.6's image-encoder defaults: batch-norm ResNet trunks (use_group_norm
# false; running statistics drawn, not 0 / 1), one encoder per camera (`--import-04 --variant batch_norm`)
BATCH_NORM_CONFIG = dict(use_group_norm=False, use_separate_rgb_encoder_per_camera=True)

CASES = {
    # shared encoder for two cameras, center crop, DDPM with every training timestep, epsilon, FiLM scale+bias
    "ddpm": dict(n_obs_steps=2, horizon=8, n_action_steps=4, image=(3, 64, 64), cameras=2, state_dim=3, action_dim=2,
                 env_dim=0, config=dict(crop_shape=(56, 56), crop_is_random=False, spatial_softmax_num_keypoints=4,
                                        use_separate_rgb_encoder_per_camera=False, down_dims=(16, 32), kernel_size=3,
                                        n_groups=4, diffusion_step_embed_dim=16, use_film_scale_modulation=True,
                                        noise_scheduler_type="DDPM", num_train_timesteps=20,
                                        beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                                        clip_sample=True, clip_sample_range=1.0, num_inference_steps=None,
                                        do_mask_loss_for_padding=False)),
    # one encoder per camera, no crop, environment state, DDIM in 5 steps, sample prediction, FiLM bias
    # only, linear betas, padding masked in the loss
    "ddim": dict(n_obs_steps=2, horizon=8, n_action_steps=5, image=(3, 48, 40), cameras=2, state_dim=3, action_dim=2,
                 env_dim=5, config=dict(crop_shape=None, spatial_softmax_num_keypoints=3,
                                        use_separate_rgb_encoder_per_camera=True, down_dims=(8, 16, 16),
                                        kernel_size=5, n_groups=2, diffusion_step_embed_dim=8,
                                        use_film_scale_modulation=False, noise_scheduler_type="DDIM",
                                        num_train_timesteps=50, beta_schedule="linear", beta_start=0.0005,
                                        beta_end=0.03, prediction_type="sample", clip_sample=True,
                                        clip_sample_range=1.5, num_inference_steps=5,
                                        do_mask_loss_for_padding=True)),
}


def recipe_tensor(name: str, shape) -> torch.Tensor:
    """The value of parameter `name` (LeRobot's state_dict name) in the fixtures: weights N(0, 1/fan_in),
    norm scales 1 + N(0, 0.01), biases N(0, 0.01). tests/test_lerobot_diffusion.py makes the same."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    if len(shape) > 1:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= int(d)
        return x / fan_in ** 0.5
    return 1 + 0.1 * x if name.endswith("weight") else 0.1 * x


def recipe_sha256(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


class Recorder:
    """Wraps torch.randn and torch.randint while LeRobot runs, keeping what they returned."""

    def __init__(self):
        self.randn, self.randint = [], []

    def __enter__(self):
        self._randn, self._randint = torch.randn, torch.randint

        def randn(*a, **k):
            out = self._randn(*a, **k)
            self.randn.append(out.clone())
            return out

        def randint(*a, **k):
            out = self._randint(*a, **k)
            self.randint.append(out.clone())
            return out
        torch.randn, torch.randint = randn, randint
        return self

    def __exit__(self, *exc):
        torch.randn, torch.randint = self._randn, self._randint
        return False


STATISTICS = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def recipe_parameters(policy) -> dict:
    """The parameters the recipe fills: every one but LeRobot 0.3's normalization statistics (kept as
    parameters without gradient there)."""
    return {k: p for k, p in policy.named_parameters() if not k.startswith(STATISTICS)}


def camera_name(case: dict, c: int) -> str:
    return case.get("camera_names", [f"observation.images.cam{i}" for i in range(case["cameras"])])[c]


def build(case: dict, stats: dict | None = None):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(case["state_dim"],))}
    for c in range(case["cameras"]):
        inputs[camera_name(case, c)] = PolicyFeature(type=FeatureType.VISUAL, shape=case["image"])
    if case["env_dim"]:
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(case["env_dim"],))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(case["action_dim"],))}
    config = DiffusionConfig(n_obs_steps=case["n_obs_steps"], horizon=case["horizon"],
                             n_action_steps=case["n_action_steps"], input_features=inputs, output_features=outputs,
                             device="cpu", push_to_hub=False, **case["config"])
    policy = DiffusionPolicy(config, **({"dataset_stats": stats} if stats is not None else {}))
    params = recipe_parameters(policy)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(recipe_tensor(name, p.shape))
    return policy


def default_parameter_count() -> int:
    """Parameters of LeRobot's DiffusionPolicy at its default configuration with PushT's features
    (one 3x96x96 camera, 2-d state, 2-d action), built on the meta device."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    config = DiffusionConfig(input_features={"observation.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96)),
                                             "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,))},
                             output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
                             device="cpu", push_to_hub=False)
    with torch.device("meta"):
        return sum(p.numel() for p in DiffusionPolicy(config).parameters())


def make_case(name: str, case: dict, out: Path):
    from safetensors.torch import save_file

    torch.manual_seed(1234)
    policy = build(case)
    b, s, h = BATCH, case["n_obs_steps"], case["horizon"]
    g = torch.Generator().manual_seed(7)
    data = {
        "state": torch.randn(b, s, case["state_dim"], generator=g),
        "images": 0.5 * torch.randn(b, s, case["cameras"], *case["image"], generator=g),
        "action": torch.rand(b, h, case["action_dim"], generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(b, h, dtype=torch.bool),
    }
    data["action_is_pad"][1, -3:] = True  # the second sample's episode ends 3 steps early
    if case["env_dim"]:
        data["env_state"] = torch.randn(b, s, case["env_dim"], generator=g)
    batch = {"observation.state": data["state"], "action": data["action"], "action_is_pad": data["action_is_pad"]}
    for c in range(case["cameras"]):
        batch[camera_name(case, c)] = data["images"][:, :, c]
    if case["env_dim"]:
        batch["observation.environment_state"] = data["env_state"]

    policy.train()
    torch.manual_seed(11)
    with Recorder() as rec:
        loss, _ = policy.forward(dict(batch))
    assert len(rec.randn) == 1 and len(rec.randint) == 1, (len(rec.randn), len(rec.randint))
    data["train_noise"], data["train_timesteps"], data["loss"] = rec.randn[0], rec.randint[0], loss.detach()

    policy.eval()
    model = policy.diffusion
    obs = {"observation.state": data["state"], "observation.images": data["images"]}
    if case["env_dim"]:
        obs["observation.environment_state"] = data["env_state"]
    chunks = []
    sample = model.conditional_sample

    def keep(*a, **k):
        chunks.append(sample(*a, **k))
        return chunks[-1]
    model.conditional_sample = keep
    torch.manual_seed(12)
    with torch.no_grad(), Recorder() as rec:
        actions = model.generate_actions(obs)
    model.conditional_sample = sample
    data["draws"] = torch.stack(rec.randn, dim=1)  # [B, draws, H, A]: x_T, then each DDPM step's noise
    data["chunk"], data["actions"] = chunks[0], actions
    encoders = model.rgb_encoder if isinstance(model.rgb_encoder, torch.nn.ModuleList) else [model.rgb_encoder]
    data["pos_grid"] = encoders[0].pool.pos_grid.clone()

    state = policy.state_dict()
    params = recipe_parameters(policy)
    with tempfile.TemporaryDirectory() as tmp:
        policy.config._save_pretrained(Path(tmp))
        config = json.loads((Path(tmp) / "config.json").read_text())
    from importlib.metadata import version
    meta = {
        "lerobot_version": version("lerobot"), "diffusers_version": version("diffusers"),
        "torch_version": torch.__version__, "batch": b, "cameras": case["cameras"], "env_dim": case["env_dim"],
        "config": config,
        "parameters": {k: list(v.shape) for k, v in params.items()},
        "buffers": sorted(set(state) - set(params)),
        "recipe_sha256": recipe_sha256(params),
        "default_pusht_parameters": default_parameter_count(),
        "made_by": "scripts/parity/lerobot_diffusion.py: DiffusionPolicy(config) with the recipe's parameters; "
                   "loss = policy.forward(batch) in train mode (torch.manual_seed(11)); chunk/actions = "
                   "policy.diffusion.conditional_sample / generate_actions in eval mode (torch.manual_seed(12)); "
                   "every torch.randn / torch.randint result recorded",
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in data.items()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"{name}: loss {loss.item():.6f}, {data['draws'].shape[1]} draws, actions {list(actions.shape)}")


def make_import_case(out: Path):
    """LeRobot 0.3.2's save_pretrained folder of a tiny policy with dataset statistics, and LeRobot's
    select_action / predict_action_chunk on raw observations. Written: import/config.json (LeRobot's),
    import/small.safetensors (every tensor of LeRobot's model.safetensors but the recipe's parameters:
    the normalization buffers and spatial-softmax grids), import/case.json (the sha256 of LeRobot's
    model.safetensors, which the test rebuilds byte for byte), import/case.safetensors (observations and
    LeRobot's actions)."""
    from safetensors.torch import load_file, save_file

    case = IMPORT_CASE
    cam = case["camera_names"][0]
    g = torch.Generator().manual_seed(3)
    def stat(shape, lo, hi, mean, std):  # a dataset's statistics: LeRobot wants all four
        return {"min": -torch.rand(shape, generator=g) * lo - 0.1, "max": torch.rand(shape, generator=g) * hi + 0.1,
                "mean": torch.rand(shape, generator=g) * mean + 0.25, "std": torch.rand(shape, generator=g) * std + 0.1}
    stats = {cam: stat((3, 1, 1), 0.0, 1.0, 0.5, 0.2), "observation.state": stat((3,), 1.0, 1.0, 0.1, 0.5),
             "action": stat((2,), 2.0, 2.0, 0.1, 0.5)}
    torch.manual_seed(1234)
    policy = build(case, stats)
    policy.eval()
    frames = [{cam: torch.rand(1, *case["image"], generator=g),
               "observation.state": (torch.rand(1, 3, generator=g) * 2 - 1) * 0.8} for _ in range(2)]
    chunks = []
    predict = policy.predict_action_chunk

    def keep(batch):
        chunks.append(predict(batch))
        return chunks[-1]
    policy.predict_action_chunk = keep
    policy.reset()
    steps = []
    torch.manual_seed(SERVE_SEED)
    with torch.no_grad():
        steps.append(policy.select_action(dict(frames[0])))  # queues: [f0, f0]; a chunk is made
        steps.append(policy.select_action(dict(frames[1])))  # queues: [f0, f1]; the next queued action
        assert len(chunks) == 1
        # window [f0, f1], the generator continuing (a served session's second request draws the same)
        policy.predict_action_chunk({"observation.state": None, "observation.images": None})
    policy.predict_action_chunk = predict
    folder = out / "import"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(Path(tmp))
        saved = Path(tmp) / "model.safetensors"
        digest = hashlib.sha256(saved.read_bytes()).hexdigest()
        tensors = load_file(str(saved))
        params = set(recipe_parameters(policy))
        small = {k: v for k, v in tensors.items() if k not in params}
        for k in params:
            assert torch.equal(tensors[k], recipe_tensor(k, tensors[k].shape)), k
        rebuilt = Path(tmp) / "rebuilt.safetensors"
        from safetensors import safe_open
        with safe_open(str(saved), "pt") as f:
            file_meta = f.metadata()
        save_file({**small, **{k: recipe_tensor(k, tensors[k].shape) for k in params}}, str(rebuilt),
                  metadata=file_meta)
        assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == digest, "the rebuilt file is not LeRobot's"
        (folder / "config.json").write_text((Path(tmp) / "config.json").read_text())
    save_file(small, str(folder / "small.safetensors"))
    from importlib.metadata import version
    meta = {"lerobot_version": version("lerobot"), "diffusers_version": version("diffusers"),
            "model_safetensors_sha256": digest, "rebuild": "save_file(small + recipe parameters, metadata=file_metadata)", "file_metadata": file_meta,
            "parameters": {k: list(tensors[k].shape) for k in sorted(params)}, "serve_seed": SERVE_SEED,
            "camera": cam, "made_by": "scripts/parity/lerobot_diffusion.py make_import_case: DiffusionPolicy(config, "
            "dataset_stats) with the recipe's parameters, eval mode; policy.reset(); torch.manual_seed(serve_seed); "
            "select_action(frame 0) (its predict_action_chunk kept: window [f0, f0]); select_action(frame 1); "
            "predict_action_chunk (window [f0, f1]; the generator continuing, as a served session's)"}
    (folder / "case.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    save_file({"image0": frames[0][cam][0], "state0": frames[0]["observation.state"][0],
               "image1": frames[1][cam][0], "state1": frames[1]["observation.state"][0],
               "chunk_first": chunks[0].clone(), "chunk_window": chunks[1].clone(), "select0": steps[0].clone(),
               "select1": steps[1].clone()},
              str(folder / "case.safetensors"))
    print(f"import: chunk_first {chunks[0].flatten()[:4].tolist()}, sha256 {digest[:12]}")


def make_import_case_04(out: Path, dst: Path | None = None, variant: str = "import"):
    """The import case's policy saved by LeRobot 0.4 or later (run with that venv's Python, after the 0.3.2
    run wrote import/): the same weights (import/small.safetensors without the normalization buffers,
    plus the recipe), the statistics of import/'s buffers in make_diffusion_pre_post_processors, saved
    with save_pretrained plus the processors' save_pretrained; records preprocessor -> select_action /
    predict_action_chunk -> postprocessor on the same frames and seeds as the 0.3.2 case. Writes `dst`
    (default import_04/): config.json, the processor files, model.json (the sha256 of its model.safetensors,
    which the recipe and small.safetensors rebuild), case.safetensors.

    variant "batch_norm": the same sizes with BATCH_NORM_CONFIG (LeRobot 0.6's defaults for the image
    encoder): the recipe's parameters, the trunks' running statistics drawn from a seeded generator; `dst`
    then also holds small.safetensors (every saved tensor but the recipe's parameters)."""
    import shutil
    from importlib.metadata import version

    from safetensors.torch import load_file, save_file
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    src, dst = out / "import", dst or out / "import_04"
    case = IMPORT_CASE if variant == "import" else {**IMPORT_CASE, "config": {**IMPORT_CASE["config"], **BATCH_NORM_CONFIG}}
    cam = case["camera_names"][0]
    small = load_file(str(src / "small.safetensors"))
    buf = lambda module, key, n: small[f"{module}.buffer_{key.replace('.', '_')}.{n}"]  # noqa: E731
    stats = {cam: {n: buf("normalize_inputs", cam, n) for n in ("mean", "std")},
             "observation.state": {n: buf("normalize_inputs", "observation.state", n) for n in ("min", "max")},
             "action": {n: buf("unnormalize_outputs", "action", n) for n in ("min", "max")}}
    torch.manual_seed(1234)
    policy = build(case)
    if variant == "import":
        weights = {k: v for k, v in small.items() if not k.startswith(STATISTICS)}
    else:  # the grids as LeRobot made them; batch-norm running statistics drawn (the counter as after 100 steps)
        g = torch.Generator().manual_seed(5)
        weights = {}
        for k, v in policy.state_dict().items():
            if k.endswith("running_mean"):
                v = 0.1 * torch.randn(v.shape, generator=g)
            elif k.endswith("running_var"):
                v = 0.5 + torch.rand(v.shape, generator=g)
            elif k.endswith("num_batches_tracked"):
                v = torch.tensor(100)
            weights[k] = v
    weights.update({k: recipe_tensor(k, p.shape) for k, p in recipe_parameters(policy).items()})
    policy.load_state_dict(weights, strict=True)
    policy.eval()
    pre, post = make_diffusion_pre_post_processors(policy.config, dataset_stats=stats)
    frames = load_file(str(src / "case.safetensors"))
    obs = [{cam: frames[f"image{i}"], "observation.state": frames[f"state{i}"]} for i in range(2)]
    chunks = []
    predict = policy.predict_action_chunk

    def keep(batch, *a, **k):
        chunks.append(predict(batch, *a, **k))
        return chunks[-1]
    policy.predict_action_chunk = keep
    policy.reset()
    torch.manual_seed(SERVE_SEED)
    with torch.no_grad():
        policy.select_action(pre(obs[0]))
        policy.select_action(pre(obs[1]))
        policy.predict_action_chunk({"observation.state": None, "observation.images": None})
    policy.predict_action_chunk = predict
    chunks = [post(c) for c in chunks]
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "diffusion"
        policy.save_pretrained(saved)
        pre.save_pretrained(saved)
        post.save_pretrained(saved)
        digest = hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
        from safetensors import safe_open
        with safe_open(str(saved / "model.safetensors"), "pt") as f:
            file_meta = f.metadata()
        rebuilt = Path(tmp) / "rebuilt.safetensors"
        save_file(weights, str(rebuilt), metadata=file_meta)
        assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == digest, "the weights do not rebuild the 0.4 save"
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(saved.iterdir()):
            if f.name != "model.safetensors":
                shutil.copy(f, dst / f.name)
    extra = {}
    if variant != "import":
        params = recipe_parameters(policy)
        save_file({k: v for k, v in weights.items() if k not in params}, str(dst / "small.safetensors"))
        extra = {"variant": variant, "parameters": {k: list(p.shape) for k, p in sorted(params.items())}}
    (dst / "model.json").write_text(json.dumps({**extra,
        "model_safetensors_sha256": digest, "file_metadata": file_meta, "lerobot_version": version("lerobot"),
        "rule": "import/small.safetensors without normalize_inputs / normalize_targets / unnormalize_outputs, "
                "plus the recipe's parameters" if variant == "import" else
                "small.safetensors (this folder) plus the recipe's parameters"}, indent=1, sort_keys=True) + "\n")
    save_file({"chunk_first": chunks[0].clone(), "chunk_window": chunks[1].clone()}, str(dst / "case.safetensors"))
    if variant == "import":
        first = (chunks[0] - load_file(str(src / "case.safetensors"))["chunk_first"]).abs().max().item()
        print(f"{dst.name}: predict_action_chunk vs 0.3.2's on the same weights and seed: max |diff| {first:.2e}")
    else:
        print(f"{dst.name}: {variant}, lerobot {version('lerobot')}, chunk_first {chunks[0].flatten()[:4].tolist()}")


def main():
    from check_lerobot import _torchvision_without_compiled_ops

    ap = argparse.ArgumentParser()
    ap.add_argument("--import-04", action="store_true", help="with LeRobot 0.4+: the import case saved by that version")
    ap.add_argument("--out", default=str(HERE.parents[1] / "tests" / "fixtures" / "lerobot" / "diffusion"))
    ap.add_argument("--dst", default=None, help="--import-04: where the save goes (default OUT/import_04)")
    ap.add_argument("--variant", choices=("import", "batch_norm"), default="import",
                    help="--import-04: the import case as is, or at LeRobot 0.6's encoder defaults (BATCH_NORM_CONFIG)")
    args = ap.parse_args()
    print(_torchvision_without_compiled_ops())
    from importlib.metadata import version
    torch.set_num_threads(1)
    if version("lerobot") == IMPORT_VERSION:
        make_import_case(Path(args.out))
        return
    if "--import-04" in sys.argv[1:]:
        make_import_case_04(Path(args.out), Path(args.dst) if args.dst else None, args.variant)
        return
    if version("lerobot") != LEROBOT_VERSION:
        raise SystemExit(f"this script is pinned to LeRobot {LEROBOT_VERSION} (parity cases) and "
                         f"{IMPORT_VERSION} (import case), found {version('lerobot')}")
    for name, case in CASES.items():
        make_case(name, case, Path(args.out))


if __name__ == "__main__":
    main()
