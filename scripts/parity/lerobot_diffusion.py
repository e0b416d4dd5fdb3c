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

Usage:
  /tmp/lerobot-venvs/lerobot-0.4.1/bin/python scripts/parity/lerobot_diffusion.py [--out tests/fixtures/lerobot/diffusion]

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
LEROBOT_VERSION = "0.4.1"
BATCH = 2

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


def build(case: dict):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(case["state_dim"],))}
    for c in range(case["cameras"]):
        inputs[f"observation.images.cam{c}"] = PolicyFeature(type=FeatureType.VISUAL, shape=case["image"])
    if case["env_dim"]:
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(case["env_dim"],))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(case["action_dim"],))}
    config = DiffusionConfig(n_obs_steps=case["n_obs_steps"], horizon=case["horizon"],
                             n_action_steps=case["n_action_steps"], input_features=inputs, output_features=outputs,
                             device="cpu", push_to_hub=False, **case["config"])
    policy = DiffusionPolicy(config)
    params = dict(policy.named_parameters())
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
        batch[f"observation.images.cam{c}"] = data["images"][:, :, c]
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
    params = dict(policy.named_parameters())
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


def main():
    from check_lerobot import _torchvision_without_compiled_ops

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parents[1] / "tests" / "fixtures" / "lerobot" / "diffusion"))
    args = ap.parse_args()
    print(_torchvision_without_compiled_ops())
    from importlib.metadata import version
    if version("lerobot") != LEROBOT_VERSION:
        raise SystemExit(f"this script is pinned to LeRobot {LEROBOT_VERSION}, found {version('lerobot')}")
    torch.set_num_threads(1)
    for name, case in CASES.items():
        make_case(name, case, Path(args.out))


if __name__ == "__main__":
    main()
