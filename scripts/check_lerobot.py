"""Open a GraphVLA recording with LeRobot's own code and train LeRobot's ACT on it for two steps.

Run by scripts/check_lerobot.sh inside a side virtual environment that holds a pinned LeRobot
(0.3.x for a v2.1 recording, 0.4.x for v3.0); not part of the package. Prints what it checked and
exits non-zero at the first failure.

    python scripts/check_lerobot.py DATASET_DIR [--steps 2]
"""
from __future__ import annotations

import argparse
import sys
import types


def _torchvision_without_compiled_ops() -> str:
    """PyPI's torchvision wheels are CUDA builds; beside a CPU torch their compiled operators (nms,
    roi_align: unused by ACT) do not load and `import torchvision` fails registering their meta
    kernels. Skip that registration then (ACT uses torchvision's ResNet and FrozenBatchNorm2d,
    plain Python)."""
    try:
        import torchvision  # noqa: F401

        return "torchvision imported as is"
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchvision  # noqa: F401, F811

    return "torchvision imported without its compiled operators (CUDA wheel beside a CPU torch)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    print(_torchvision_without_compiled_ops())

    import numpy as np
    import torch
    from importlib.metadata import version

    from lerobot.configs.types import FeatureType
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.utils import dataset_to_policy_features
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    lerobot_version = version("lerobot")
    print(f"lerobot {lerobot_version}, datasets {version('datasets')}, torch {torch.__version__}")
    chunk = 10
    probe = LeRobotDataset("local/graphvla", root=args.dataset)
    fps = probe.fps
    ds = LeRobotDataset("local/graphvla", root=args.dataset,
                        delta_timestamps={"action": [i / fps for i in range(chunk)]})
    print(f"opened {args.dataset}: codebase {ds.meta.info['codebase_version']}, {ds.num_episodes} episodes, "
          f"{ds.num_frames} frames, fps {fps}, cameras {ds.meta.camera_keys}")

    # Items: LeRobot's decoded values equal GraphVLA's reader, frame by frame.
    from graphvla.data.lerobot import open_lerobot

    ours = open_lerobot(args.dataset)
    for row in (0, len(ds) // 2, len(ds) - 1):
        item = ds[row]
        for key in ds.meta.camera_keys:
            img = item[key]
            assert img.dtype == torch.float32 and img.shape[0] == 3, (key, img.dtype, img.shape)
            want = torch.from_numpy(np.array(ours.image(key, row))).permute(2, 0, 1).float() / 255
            assert torch.equal(img, want), f"{key} at row {row} differs from GraphVLA's frame"
        for key, col in ours.columns.items():
            got = np.asarray(item[key][0] if key == "action" else item[key], dtype=np.float32).reshape(-1)
            assert np.array_equal(got, col[row]), f"{key} at row {row}: {got} != {col[row]}"
        assert item["action"].shape == (chunk, ours.width("action")), item["action"].shape
        print(f"  item {row}: task '{item['task']}', cameras and {len(ours.columns)} vectors equal GraphVLA's reader")

    # LeRobot's policy features and image statistics, as ACT's normalization reads them.
    features = dataset_to_policy_features(ds.meta.features)
    for key in ds.meta.camera_keys:
        assert features[key].type is FeatureType.VISUAL and features[key].shape[0] == 3, features[key]
        for stat in ("mean", "std", "min", "max"):
            assert np.asarray(ds.meta.stats[key][stat]).shape == (3, 1, 1), (key, stat)
    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in features.items() if k not in outputs}
    print("  policy features: " + ", ".join(f"{k} {f.type.name} {tuple(f.shape)}" for k, f in features.items()))

    cfg = ACTConfig(input_features=inputs, output_features=outputs, chunk_size=chunk, n_action_steps=chunk,
                    dim_model=64, n_heads=2, dim_feedforward=128, n_encoder_layers=1, n_decoder_layers=1,
                    latent_dim=8, n_vae_encoder_layers=1, pretrained_backbone_weights=None, device="cpu")
    torch.manual_seed(0)
    if lerobot_version.startswith("0.3."):
        policy = ACTPolicy(cfg, dataset_stats=ds.meta.stats)
        preprocess = None
    else:
        from lerobot.policies.factory import make_pre_post_processors

        policy = ACTPolicy(cfg)
        preprocess, _ = make_pre_post_processors(cfg, dataset_stats=ds.meta.stats)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    batches = iter(loader)
    for step in range(args.steps):
        batch = next(batches)
        if preprocess is not None:
            batch = preprocess(batch)
        loss, parts = policy.forward(batch)
        assert torch.isfinite(loss), f"step {step}: loss {loss}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"  ACT step {step + 1}: loss {loss.item():.4f} " + str({k: round(float(v), 4) for k, v in parts.items()}))
    print("OK: LeRobot opened the recording, its items equal GraphVLA's, and ACT trained on it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
