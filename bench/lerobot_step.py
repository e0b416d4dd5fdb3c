"""Training-step speed of GraphVLA's `lerobot/act` beside LeRobot's own ACTPolicy, same config, same
weights, same batch, on the CPU; the figure is the ratio GraphVLA / LeRobot of samples per second
(above 1: GraphVLA faster), measured in one run.

    /tmp/lerobot-venvs/lerobot-0.3.2/bin/python bench/lerobot_step.py [--batch 8] [--image 96 128]
        [--steps 3] [--rounds 5] [--threads 1]
    /tmp/lerobot-venvs/lerobot-0.3.2/bin/python bench/lerobot_step.py --policy diffusion [--batch 8] ...
        (LeRobot's DiffusionPolicy at its default config beside lerobot/diffusion: diffusion_main)

Run with the Python of a side virtual environment that holds LeRobot (scripts/check_lerobot.sh makes
/tmp/lerobot-venvs/lerobot-0.3.2 with --system-site-packages, so graphvla imports there too); LeRobot
is imported by this script only, never by the package.

The config is LeRobot's default ACTConfig (width 512, 8 heads, feedforward 3200, 4 encoder layers, 1
decoder layer, a CVAE of 4 layers, latent 32, dropout 0.1, chunk 100, ResNet-18 with frozen batch
norm) with one camera of --image pixels (default 96 x 128, not Aloha's 480 x 640, to keep a CPU
step short), a 14-d state and 14-d actions; LeRobot builds it with random weights and dataset
statistics, and GraphVLA's graph gets those weights through `graphvla import lerobot`'s mapping
(graphvla/runners/importers/lerobot.py) on the packaged graph. One step, from the raw batch
(images in [0, 1], state and actions in dataset units, action_is_pad):

- LeRobot: lerobot.scripts.train.update_policy (policy.forward with its normalization, backward,
  gradient clip 10, AdamW step on get_optim_params(), zero_grad);
- GraphVLA: the run's preprocess pipeline (normalization), the compiled train graph through the
  trainer's GraphTrainModule, backward, gradient clip 10, AdamW step on the trainer's block param
  groups (runners/train/loop.block_optimizer), zero_grad: what Trainer.train_step does per step
  without Accelerate's wrapper.

Before timing, one step of each with dropout off and the same CVAE eps must give the same loss
(within 1e-4), so both compute the same thing. Then --rounds rounds of --steps steps each, the
order alternating; per round both sides' samples/s and their ratio; the median ratio is the figure.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from check_lerobot import _torchvision_without_compiled_ops  # noqa: E402

_torchvision_without_compiled_ops()

import torch  # noqa: E402


def lerobot_side(args):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    torch.manual_seed(0)
    image = (3, *args.image)
    config = ACTConfig(input_features={"observation.images.top": PolicyFeature(FeatureType.VISUAL, image),
                                       "observation.state": PolicyFeature(FeatureType.STATE, (14,))},
                       output_features={"action": PolicyFeature(FeatureType.ACTION, (14,))},
                       pretrained_backbone_weights=None)
    g = torch.Generator().manual_seed(1)
    stats = {"observation.images.top": {"mean": torch.full((3, 1, 1), 0.45), "std": torch.full((3, 1, 1), 0.25)},
             "observation.state": {"mean": torch.randn(14, generator=g), "std": 0.5 + torch.rand(14, generator=g)},
             "action": {"mean": torch.randn(14, generator=g), "std": 0.5 + torch.rand(14, generator=g)}}
    policy = ACTPolicy(config, dataset_stats=stats)
    b, h = args.batch, config.chunk_size
    batch = {"observation.images.top": torch.rand(b, *image, generator=g),
             "observation.state": torch.randn(b, 14, generator=g), "action": torch.randn(b, h, 14, generator=g),
             "action_is_pad": torch.zeros(b, h, dtype=torch.bool)}
    batch["action_is_pad"][0, h // 2:] = True
    return policy, batch


def graphvla_side(policy, folder: Path):
    from safetensors.torch import load_file

    from graphvla.compiler.compile import compile_graph
    from graphvla.runners.importers import lerobot as L
    from graphvla.runners.train.loop import GraphTrainModule, block_optimizer

    policy.save_pretrained(folder)
    cfg_path, cfg = L.read_config(folder)
    features = L.features_of(cfg, cfg_path)
    state = load_file(str(folder / "model.safetensors"))
    stats, modes, images, _ = L.normalization_of(folder, "0.3", state, cfg, features, cfg_path)
    spec = L.build_spec(L.POLICIES["act"], cfg, cfg_path, features, images, modes)
    cg = compile_graph(spec, device="cpu")
    cg.model.load_state_dict(L.map_weights(state, cg.model.state_dict(), L.fixed_tables(cg, L.POLICIES["act"]),
                                           folder / "model.safetensors", L.POLICIES["act"]), strict=True)
    preprocess, _ = cg.bound_pipelines(stats, modes)
    module = GraphTrainModule(cg)
    optimizer = block_optimizer(cg, {**spec["trainer"], "betas": spec["trainer"]["betas"]})
    return cg, module, preprocess, optimizer


# Diffusion Policy (--policy diffusion) ------------------------------------------------------------
def diffusion_sides(args, folder: Path):
    """LeRobot 0.3.2's DiffusionPolicy at its default config (PushT's sizes: one 96 x 96 camera, 2-d state
    and actions, n_obs_steps 2, horizon 16, UNet 512/1024/2048; 262,709,026 parameters) with dataset
    statistics, and graphs/lerobot/diffusion with its weights through `graphvla import lerobot`'s mapping."""
    from safetensors.torch import load_file

    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    from graphvla.compiler.compile import compile_graph
    from graphvla.runners.importers import lerobot as L
    from graphvla.runners.train.loop import GraphTrainModule, block_optimizer

    torch.manual_seed(0)
    image = (3, 96, 96)
    config = DiffusionConfig(input_features={"observation.image": PolicyFeature(FeatureType.VISUAL, image),
                                             "observation.state": PolicyFeature(FeatureType.STATE, (2,))},
                             output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))})
    g = torch.Generator().manual_seed(1)

    def stat(shape):
        return {"mean": torch.rand(shape, generator=g) * 0.5 + 0.25, "std": torch.rand(shape, generator=g) * 0.2 + 0.1,
                "min": -torch.rand(shape, generator=g) - 0.1, "max": torch.rand(shape, generator=g) + 0.1}
    stats = {"observation.image": stat((3, 1, 1)), "observation.state": stat((2,)), "action": stat((2,))}
    policy = DiffusionPolicy(config, dataset_stats=stats)
    b, s, h = args.batch, config.n_obs_steps, config.horizon
    raw = {"observation.image": torch.rand(b, s, *image, generator=g), "observation.state": torch.rand(b, s, 2, generator=g) - 0.5,
           "action": torch.rand(b, h, 2, generator=g) - 0.5, "action_is_pad": torch.zeros(b, h, dtype=torch.bool)}
    policy.save_pretrained(folder)
    cfg_path, cfg = L.read_config(folder)
    features = L.features_of(cfg, cfg_path)
    state = load_file(str(folder / "model.safetensors"))
    stats_, modes, images, _ = L.normalization_of(folder, "0.3", state, cfg, features, cfg_path)
    policy_type = L.POLICIES["diffusion"]
    spec = L.build_spec(policy_type, cfg, cfg_path, features, images, modes)
    cg = compile_graph(spec, device="cpu")
    cg.model.load_state_dict(L.map_weights(state, cg.model.state_dict(), L.fixed_tables(cg, policy_type),
                                           folder / "model.safetensors", policy_type), strict=True)
    preprocess, _ = cg.bound_pipelines(stats_, modes)
    module = GraphTrainModule(cg)
    optimizer = block_optimizer(cg, {**spec["trainer"], "betas": spec["trainer"]["betas"]})
    ours = {"images": raw["observation.image"], "state": raw["observation.state"], "actions": raw["action"],
            "actions_mask": ~raw["action_is_pad"]}
    return policy, raw, cg, module, preprocess, optimizer, ours


def diffusion_main(args) -> None:
    """--policy diffusion: the same protocol as ACT's (same weights and batch, one check that both
    compute the same loss, then alternating timed rounds). The check seeds torch's generator before
    each side's forward: both draw the random crop (two randint), the noise (randn) and the timesteps
    (randint) in the same order and shapes, so the same seed is the same draws."""
    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as tmp:
        policy, raw, cg, module, preprocess, optimizer, ours_batch = diffusion_sides(args, Path(tmp) / "diffusion")
    policy.train()
    module.train()
    with torch.no_grad():
        torch.manual_seed(7)
        theirs = policy.forward(dict(raw))[0].item()
        torch.manual_seed(7)
        ours = module("action", preprocess(dict(ours_batch)))["loss"].item()
    print(f"same step, same seed (crop, noise, timesteps): loss LeRobot {theirs:.6f}, GraphVLA {ours:.6f}")
    if abs(theirs - ours) > 1e-4 * max(1.0, abs(theirs)):
        raise SystemExit("the two sides do not compute the same loss: not timing")
    lerobot_step, graphvla_step = training_steps(args, policy, raw, cg, module, preprocess, optimizer, ours_batch)
    rounds(args, lerobot_step, graphvla_step, f"LeRobot {version('lerobot')}, torch {torch.__version__}, threads "
           f"{args.threads}, batch {args.batch}, Diffusion Policy default (96 x 96, horizon 16)", "Diffusion Policy")


def training_steps(args, policy, raw, cg, module, preprocess, optimizer, ours_batch):
    """(LeRobot's training step: its update_policy with its optimizer preset, GraphVLA's: forward,
    backward, the trainer section's grad clip (asserted equal to LeRobot's), optimizer step) on one batch."""
    from lerobot.scripts.train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker

    lr_cfg = policy.config.get_optimizer_preset()
    lerobot_optimizer = lr_cfg.build(policy.get_optim_params())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    metrics = MetricsTracker(args.batch, 1000, 10, {k: AverageMeter(k, ":.3f") for k in ("loss", "grad_norm", "lr", "update_s")})
    params = [p for grp in optimizer.param_groups for p in grp["params"]]
    spec_clip = float(cg.spec.section("trainer")["grad_clip"])
    assert spec_clip == lr_cfg.grad_clip_norm, (spec_clip, lr_cfg.grad_clip_norm)

    def lerobot_step():
        update_policy(metrics, policy, dict(raw), lerobot_optimizer, lr_cfg.grad_clip_norm, scaler)

    def graphvla_step():
        module.train()
        out = module("action", preprocess(dict(ours_batch)))
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, spec_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return lerobot_step, graphvla_step


def rounds(args, lerobot_step, graphvla_step, header: str, label: str) -> None:
    """Warm-up, then --rounds rounds of --steps steps of each side, the order alternating; prints each
    round's samples/s and the median ratio GraphVLA / LeRobot (wall and process CPU time)."""
    def timed(step):
        """(samples/s of wall time, samples/s of this process's CPU time: less blurred by other jobs)."""
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        n = args.batch * args.steps
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu)

    lerobot_step(), graphvla_step()  # warm-up
    print(f"{header}, load {os.getloadavg()[0]:.2f}")
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            theirs, ours = timed(lerobot_step), timed(graphvla_step)
        else:
            ours, theirs = timed(graphvla_step), timed(lerobot_step)
        ratios.append(ours[0] / theirs[0])
        cpu_ratios.append(ours[1] / theirs[1])
        print(f"round {r}: LeRobot {theirs[0]:.2f} samples/s, GraphVLA {ours[0]:.2f} samples/s, ratio {ratios[-1]:.3f} "
              f"(CPU time: {cpu_ratios[-1]:.3f})")
    print(f"median ratio GraphVLA / LeRobot (training step, {label}): {statistics.median(ratios):.3f} wall, "
          f"{statistics.median(cpu_ratios):.3f} CPU time (load {os.getloadavg()[0]:.2f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", choices=("act", "diffusion"), default="act",
                    help="act: lerobot/act (--image sets its camera); diffusion: lerobot/diffusion at PushT's sizes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image", type=int, nargs=2, default=[96, 128])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.policy == "diffusion":
        return diffusion_main(args)

    from importlib.metadata import version

    from lerobot.optim.optimizers import AdamWConfig

    policy, raw = lerobot_side(args)
    with tempfile.TemporaryDirectory() as tmp:
        cg, module, preprocess, optimizer = graphvla_side(policy, Path(tmp) / "act")
    assert isinstance(policy.config.get_optimizer_preset(), AdamWConfig)
    ours_batch = {"images": raw["observation.images.top"][:, None], "state": raw["observation.state"],
                  "actions": raw["action"], "actions_mask": ~raw["action_is_pad"]}

    # the same computation: dropout off, the same eps
    eps = torch.randn(args.batch, policy.config.latent_dim, generator=torch.Generator().manual_seed(7))
    # nn.Dropout's p, and nn.MultiheadAttention's own attention dropout
    dropouts = [(m, "p" if isinstance(m, torch.nn.Dropout) else "dropout")
                for m in list(policy.modules()) + list(cg.model.modules())
                if isinstance(m, (torch.nn.Dropout, torch.nn.MultiheadAttention))]
    saved_p = [getattr(m, a) for m, a in dropouts]
    for m, a in dropouts:
        setattr(m, a, 0.0)
    randn_like = torch.randn_like
    torch.randn_like = lambda x, *a, **k: eps.clone()
    try:
        policy.train()
        with torch.no_grad():
            theirs = policy.forward(dict(raw))[0].item()
            module.train()
            ours = module("action", preprocess(dict(ours_batch)))["loss"].item()
    finally:
        torch.randn_like = randn_like
        for (m, a), p in zip(dropouts, saved_p):
            setattr(m, a, p)
    print(f"same step, dropout off, same eps: loss LeRobot {theirs:.6f}, GraphVLA {ours:.6f}")
    if abs(theirs - ours) > 1e-4 * max(1.0, abs(theirs)):
        raise SystemExit("the two sides do not compute the same loss: not timing")
    lerobot_step, graphvla_step = training_steps(args, policy, raw, cg, module, preprocess, optimizer, ours_batch)
    rounds(args, lerobot_step, graphvla_step,
           f"LeRobot {version('lerobot')}, torch {torch.__version__}, threads {args.threads}, batch {args.batch}, "
           f"image {args.image}, chunk {policy.config.chunk_size}", "ACT")


if __name__ == "__main__":
    main()
