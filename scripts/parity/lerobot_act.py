"""Parity fixtures from LeRobot's own ACT (run OUTSIDE the package, in a side virtual environment
holding a pinned LeRobot: scripts/check_lerobot.sh makes /tmp/lerobot-venvs/lerobot-0.3.2).

Builds LeRobot's ACTPolicy on a tiny config (two cameras of 64 x 80, a 4-d state, 3-d actions,
chunks of 5, width 32) with fixed seeds and dataset statistics, gives its ResNet-18 backbone
weights drawn by a recipe (below), saves it with LeRobot's save_pretrained and records on a fixed
batch: the normalized inputs, the CVAE's eps LeRobot drew (captured from torch.randn_like), the
training loss and its parts (policy.forward, train mode), the normalized actions of that forward,
predict_action_chunk (eval mode, unnormalized), select_action over a short episode, and
ACTTemporalEnsembler's actions over a sequence of chunks. Writes tests/fixtures/lerobot/act/:

  config.json          the config.json LeRobot's save_pretrained wrote (verbatim)
  small.safetensors    every tensor of LeRobot's model.safetensors except the backbone's
                       (model.backbone.*), under LeRobot's names, as saved
  backbone.json        the recipe of the backbone's tensors (ResNet-18 is 11M numbers, far over a
                       fixture's size): key -> shape, seed, mean, std, abs; plus the sha256 of
                       LeRobot's model.safetensors, which small + recipe must rebuild byte for byte
  case.safetensors     inputs and LeRobot's outputs
  case.json            sizes, versions, how the case was made

The recipe: for each backbone key, t = mean + std * torch.randn(shape, generator=Generator().
manual_seed(seed)) (abs() where marked: variances), float32. The test rebuilds the file and checks
its sha256 before comparing anything.

    /tmp/lerobot-venvs/lerobot-0.3.2/bin/python scripts/parity/lerobot_act.py [--out tests/fixtures/lerobot/act]
    /tmp/lerobot-venvs/lerobot-0.4.1/bin/python scripts/parity/lerobot_act.py --format-04   (then: main_04's doc)
    /tmp/lerobot-venvs/lerobot-X/bin/python scripts/parity/lerobot_act.py --format-04 --out DIR   (any 0.4+:
        the same policy saved by that version; docs/lerobot.md "Which LeRobot versions")
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # scripts/: check_lerobot's torchvision workaround
from check_lerobot import _torchvision_without_compiled_ops  # noqa: E402

print(_torchvision_without_compiled_ops())

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

SEED = 0
BATCH = 3
CAMERAS = ("observation.images.top", "observation.images.wrist")
IMAGE = (3, 64, 80)
STATE_DIM, ACTION_DIM, CHUNK = 4, 3, 5
TINY = dict(dim_model=32, n_heads=4, dim_feedforward=64, n_encoder_layers=2, n_decoder_layers=2,
            n_vae_encoder_layers=2, latent_dim=8, dropout=0.0, kl_weight=10.0, chunk_size=CHUNK,
            n_action_steps=CHUNK, pretrained_backbone_weights=None)
EPISODE = 7  # select_action / temporal ensembling steps
ENSEMBLE_COEFF = 0.01


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_tensor(entry: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(entry["seed"])
    t = torch.randn(entry["shape"], generator=g, dtype=torch.float32) * entry["std"] + entry["mean"]
    return t.abs() if entry["abs"] else t


def backbone_recipe(state: dict) -> dict:
    """Kaiming-scaled convs, batch-norm affine near (1, 0), statistics near (0, 1)."""
    recipe = {}
    for i, key in enumerate(sorted(k for k in state if k.startswith("model.backbone."))):
        shape = list(state[key].shape)
        leaf = key.rsplit(".", 1)[1]
        if len(shape) == 4:  # conv
            mean, std = 0.0, (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        else:
            mean, std = {"weight": (1.0, 0.1), "bias": (0.0, 0.1), "running_mean": (0.0, 0.1),
                         "running_var": (1.0, 0.2)}[leaf]
        recipe[key] = {"shape": shape, "seed": 1000 + i, "mean": mean, "std": std, "abs": leaf == "running_var"}
    return recipe


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parents[1] / "tests" / "fixtures" / "lerobot" / "act"))
    args = ap.parse_args()
    out = Path(args.out)

    from importlib.metadata import version

    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy, ACTTemporalEnsembler

    lerobot_version = version("lerobot")
    torch.manual_seed(SEED)
    features_in = {k: PolicyFeature(FeatureType.VISUAL, IMAGE) for k in CAMERAS}
    features_in["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    config = ACTConfig(input_features=features_in,
                       output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}, **TINY)
    g = torch.Generator().manual_seed(SEED + 1)
    stats = {}
    for k in CAMERAS:  # per-camera image statistics, not ImageNet's: the import must carry them per view
        stats[k] = {"mean": (0.3 + 0.4 * torch.rand(3, 1, 1, generator=g)),
                    "std": (0.1 + 0.2 * torch.rand(3, 1, 1, generator=g))}
    stats["observation.state"] = {"mean": torch.randn(STATE_DIM, generator=g), "std": 0.5 + torch.rand(STATE_DIM, generator=g)}
    stats["action"] = {"mean": torch.randn(ACTION_DIM, generator=g), "std": 0.5 + torch.rand(ACTION_DIM, generator=g)}
    policy = ACTPolicy(config, dataset_stats=stats)
    state = policy.state_dict()
    recipe = backbone_recipe(state)
    state.update({k: recipe_tensor(e) for k, e in recipe.items()})
    policy.load_state_dict(state, strict=True)

    # the batch
    images = {k: torch.rand(BATCH, *IMAGE, generator=g) for k in CAMERAS}
    obs_state = stats["observation.state"]["mean"] + stats["observation.state"]["std"] * torch.randn(BATCH, STATE_DIM, generator=g)
    action = stats["action"]["mean"] + stats["action"]["std"] * torch.randn(BATCH, CHUNK, ACTION_DIM, generator=g)
    is_pad = torch.zeros(BATCH, CHUNK, dtype=torch.bool)
    is_pad[1, 3:] = True  # the end of an episode: two padded steps
    batch = {**images, "observation.state": obs_state, "action": action, "action_is_pad": is_pad}

    # training forward, recording the CVAE's eps
    drawn = []
    randn_like = torch.randn_like

    def recording(x, *a, **k):
        t = randn_like(x, *a, **k)
        drawn.append(t.clone())
        return t

    policy.train()
    torch.randn_like = recording
    try:
        normalized = policy.normalize_targets(policy.normalize_inputs(dict(batch)))
        loss, parts = policy.forward(dict(batch))
    finally:
        torch.randn_like = randn_like
    assert len(drawn) == 1, f"expected one eps draw, got {len(drawn)}"
    # the normalized actions of that forward: the model again with the same eps
    torch.randn_like = lambda x, *a, **k: drawn[0].clone()
    try:
        b = dict(normalized)
        b["observation.images"] = [b[k] for k in CAMERAS]
        train_actions, (mu, logvar) = policy.model(b)
    finally:
        torch.randn_like = randn_like

    policy.eval()
    with torch.no_grad():
        chunk = policy.predict_action_chunk({k: v for k, v in batch.items() if not k.startswith("action")})
    # an episode: select_action (queue of n_action_steps) and the temporal ensembler over its chunks
    ep_images = {k: torch.rand(EPISODE, 1, *IMAGE, generator=g) for k in CAMERAS}
    ep_state = obs_state[:1] + 0.1 * torch.randn(EPISODE, 1, STATE_DIM, generator=g)
    policy.reset()
    selected, chunks = [], []
    ensembler = ACTTemporalEnsembler(ENSEMBLE_COEFF, CHUNK)
    ensembled = []
    with torch.no_grad():
        for t in range(EPISODE):
            obs = {**{k: ep_images[k][t] for k in CAMERAS}, "observation.state": ep_state[t]}
            selected.append(policy.select_action(dict(obs)))
            c = policy.predict_action_chunk(dict(obs))
            chunks.append(c)
            ensembled.append(ensembler.update(c.clone()))

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "act"
        policy.save_pretrained(saved)
        model_file = saved / "model.safetensors"
        digest = sha256(model_file)
        tensors = load_file(str(model_file))
        small = {k: v for k, v in tensors.items() if not k.startswith("model.backbone.")}
        assert set(tensors) - set(small) == set(recipe), "the saved backbone keys are not the recipe's"
        rebuilt = Path(tmp) / "rebuilt.safetensors"
        save_file({**small, **{k: recipe_tensor(e) for k, e in recipe.items()}}, str(rebuilt))  # save_model: no metadata
        assert sha256(rebuilt) == digest, "small + recipe does not rebuild LeRobot's file byte for byte"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved / "config.json", out / "config.json")
        save_file(small, str(out / "small.safetensors"), metadata={"format": "pt"})

    (out / "backbone.json").write_text(json.dumps({
        "model_safetensors_sha256": digest,
        "rule": "t = mean + std * torch.randn(shape, generator=torch.Generator().manual_seed(seed)); abs() if abs",
        "tensors": recipe}, indent=1) + "\n")
    case = {**{f"image.{k}": v for k, v in images.items()}, "state": obs_state, "action": action,
            "action_is_pad": is_pad,
            "normalized.state": normalized["observation.state"], "normalized.action": normalized["action"],
            "noise": drawn[0], "loss": loss.detach().reshape(()),
            "l1_loss": torch.tensor(parts["l1_loss"]), "kld_loss": torch.tensor(parts["kld_loss"]),
            "mu": mu.detach(), "log_sigma_x2": logvar.detach(), "train_actions": train_actions.detach(),
            "predict_action_chunk": chunk,
            **{f"episode.image.{k}": v[:, 0] for k, v in ep_images.items()}, "episode.state": ep_state[:, 0],
            "episode.select_action": torch.cat(selected), "episode.chunks": torch.cat(chunks),
            "episode.ensembled": torch.cat(ensembled)}
    save_file({k: v.contiguous() for k, v in case.items()}, str(out / "case.safetensors"))
    (out / "case.json").write_text(json.dumps({
        "policy": "act", "lerobot": lerobot_version, "torch": torch.__version__, "seed": SEED,
        "cameras": list(CAMERAS), "image": list(IMAGE), "state_dim": STATE_DIM, "action_dim": ACTION_DIM,
        "chunk_size": CHUNK, "batch": BATCH, "episode": EPISODE, "temporal_ensemble_coeff": ENSEMBLE_COEFF,
        "tiny_config": TINY,
        "made_by": "scripts/parity/lerobot_act.py: ACTPolicy(config, dataset_stats) with the recipe's backbone; "
                   "loss/l1_loss/kld_loss from policy.forward (train mode; eps = noise, captured), train_actions "
                   "from policy.model on the normalized batch with the same eps, predict_action_chunk in eval "
                   "mode, select_action over the episode after reset(), ensembled = ACTTemporalEnsembler(coeff, "
                   "chunk).update over the episode's chunks"}, indent=1) + "\n")
    print(f"lerobot {lerobot_version}: loss {loss.item():.6f} (l1 {parts['l1_loss']:.6f}, kld {parts['kld_loss']:.6f}); "
          f"wrote {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name}: {f.stat().st_size} bytes")
    return 0


def main_04(out: Path | None = None) -> int:
    """The same policy saved by LeRobot 0.4 or later (run with that venv's Python): the weights and statistics of
    the 0.3.2 fixture (tests/fixtures/lerobot/act), the model built by 0.4's ACTPolicy (normalization
    moved out of the model into processor pipelines), saved with save_pretrained plus the pre- and
    post-processor's save_pretrained; records preprocessor -> predict_action_chunk -> postprocessor on
    the case's observations. Writes tests/fixtures/lerobot/act_04/: config.json, the processor files,
    model.json (the sha256 of its model.safetensors, which the 0.3.2 fixture's tensors without the
    normalization buffers plus the recipe rebuild) and case.safetensors."""
    from importlib.metadata import version

    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    src = HERE.parents[1] / "tests" / "fixtures" / "lerobot" / "act"
    out = out or src.with_name("act_04")
    lerobot_version = version("lerobot")
    assert not lerobot_version.startswith("0.3"), f"run with a LeRobot 0.4+ venv, not {lerobot_version}"
    small = load_file(str(src / "small.safetensors"))
    recipe = json.loads((src / "backbone.json").read_text())["tensors"]
    norm_prefixes = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")
    weights = {k: v for k, v in small.items() if not k.startswith(norm_prefixes)}
    weights.update({k: recipe_tensor(e) for k, e in recipe.items()})
    buffer = lambda module, key, n: small[f"{module}.buffer_{key.replace('.', '_')}.{n}"]  # noqa: E731
    stats = {k: {n: buffer("normalize_inputs", k, n) for n in ("mean", "std")} for k in (*CAMERAS, "observation.state")}
    stats["action"] = {n: buffer("unnormalize_outputs", "action", n) for n in ("mean", "std")}
    features_in = {k: PolicyFeature(FeatureType.VISUAL, IMAGE) for k in CAMERAS}
    features_in["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    config = ACTConfig(input_features=features_in,
                       output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}, **TINY)
    policy = ACTPolicy(config)
    policy.load_state_dict(weights, strict=True)
    policy.eval()
    pre, post = make_act_pre_post_processors(config, dataset_stats=stats)
    case = load_file(str(src / "case.safetensors"))
    with torch.no_grad():
        chunks = []
        for i in range(BATCH):
            obs = {k: case[f"image.{k}"][i] for k in CAMERAS}
            obs["observation.state"] = case["state"][i]
            chunks.append(post(policy.predict_action_chunk(pre(obs))))
    chunk = torch.cat(chunks)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "act"
        policy.save_pretrained(saved)
        pre.save_pretrained(saved)
        post.save_pretrained(saved)
        digest = sha256(saved / "model.safetensors")
        rebuilt = Path(tmp) / "rebuilt.safetensors"
        save_file(weights, str(rebuilt))
        assert sha256(rebuilt) == digest, "the 0.3.2 fixture's tensors do not rebuild the 0.4 model.safetensors"
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(saved.iterdir()):
            if f.name != "model.safetensors":
                shutil.copy(f, out / f.name)
    (out / "model.json").write_text(json.dumps({
        "model_safetensors_sha256": digest, "lerobot": lerobot_version,
        "rule": "tests/fixtures/lerobot/act: small.safetensors without normalize_inputs / normalize_targets / "
                "unnormalize_outputs, plus backbone.json's recipe"}, indent=1) + "\n")
    save_file({"predict_action_chunk": chunk.contiguous()}, str(out / "case.safetensors"))
    diff = (chunk - case["predict_action_chunk"]).abs().max().item()
    print(f"lerobot {lerobot_version}: predict_action_chunk vs 0.3.2's on the same weights: max |diff| {diff:.2e}; wrote {out}")
    return 0


if __name__ == "__main__":
    if "--format-04" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--format-04", action="store_true")
        ap.add_argument("--out", default=None, help="where the save goes (default tests/fixtures/lerobot/act_04)")
        args = ap.parse_args()
        sys.exit(main_04(Path(args.out) if args.out else None))
    sys.exit(main())
