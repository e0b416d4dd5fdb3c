"""A tiny starVLA QwenOFT checkpoint written the way starVLA's trainer writes one, and what starVLA
serves from it (run OUTSIDE the package, in the side virtual environment of starvla.py).

starVLA's trainer (starVLA/training/train_starvla.py) leaves in its output_dir:
  config.yaml                              OmegaConf.save of the run's config
  dataset_statistics.json                  starVLA.dataloader.save_dataset_statistics: per dataset
                                           key, action (and state) mean/std/min/max/q01/q99/mask
  checkpoints/steps_N_model.safetensors    the framework's state_dict (trainer.save_format safetensors;
                                           `steps_N_pytorch_model.pt` with the default `pt`)
The base VLM's tokenizer and processor are not copied: config.yaml names them
(framework.qwenvl.base_vlm).

This script writes such a folder for the weights of tests/fixtures/starvla/qwenoft/state.json
(starVLA's own QwenOFT initialisation, see starvla.py), loads it back with starVLA's own
`from_pretrained`, runs `predict_action` on the fixture's two observations and un-normalizes with
starVLA's `FrameworkTools.unnormalize_actions` (clip to [-1, 1], gripper channel 6 thresholded at
0.5, q01/q99 rescale of the masked dimensions): the actions a starVLA deployment serves. Output:
tests/fixtures/starvla/qwenoft_ckpt/ (ckpt/ is the checkpoint folder, expected.safetensors and
expected.json what starVLA served). The weights file is qwenoft/state.json's state dict saved again, so it
is not stored twice: after starVLA has loaded it the script records its sha256 in expected.json
(checkpoint_sha256, checkpoint_from) and removes it; tests/starvla_ckpt.py rebuilds it byte for byte.

Usage: /tmp/starvla-venv/bin/python scripts/parity/starvla_ckpt.py --starvla /tmp/starvla
(after starvla.py has written tests/fixtures/starvla/qwenoft and its tiny VLM in --work)."""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starvla import open_starvla  # noqa: E402

STEPS = 2
DATASET_KEY = "tiny_libero"


def statistics(action_dim: int, rng) -> dict:
    """Statistics as starVLA's dataloader computes them (numpy arrays; save_dataset_statistics makes
    them lists). Dimension 5 is unmasked (left normalized by starVLA), 6 is the gripper."""
    q01 = rng.uniform(-2.0, -0.5, action_dim)
    q99 = rng.uniform(0.5, 2.0, action_dim)
    mask = np.ones(action_dim, dtype=bool)
    mask[5] = False
    return {DATASET_KEY: {"action": {"mean": (q01 + q99) / 2, "std": (q99 - q01) / 4, "min": q01 - 0.1,
                                     "max": q99 + 0.1, "q01": q01, "q99": q99, "mask": mask},
                          "num_transitions": np.asarray(100), "num_trajectories": np.asarray(4)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True)
    fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"
    ap.add_argument("--fixtures", default=str(fixtures))
    ap.add_argument("--work", default="/tmp/starvla-parity")
    args = ap.parse_args()
    commit, _ = open_starvla(args.starvla, "QWen3")
    from omegaconf import OmegaConf
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from starVLA.dataloader import save_dataset_statistics
    from starVLA.model.framework.VLM4A.QwenOFT import Qwenvl_OFT
    from starVLA.model.tools import FrameworkTools

    src = Path(args.fixtures) / "qwenoft"
    meta = json.loads((src / "case.json").read_text())
    vlm_dir = Path(args.work) / "tiny-Qwen3-VL"
    assert (vlm_dir / "config.json").is_file(), f"run starvla.py first (it writes {vlm_dir})"
    out = Path(args.fixtures) / "qwenoft_ckpt"
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "ckpt"
    (run_dir / "checkpoints").mkdir(parents=True)

    # the trainer's files: config.yaml (OmegaConf.save), dataset_statistics.json, checkpoints/steps_N_model.safetensors
    cfg = OmegaConf.create({
        "run_id": "tiny_qwenoft", "output_dir": str(run_dir), "seed": 42,
        "framework": {"name": "QwenOFT", "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
                      "action_model": {"action_model_type": "MLP", "action_dim": meta["action_dim"],
                                       "action_horizon": meta["horizon"]}},
        "datasets": {"vla_data": {"dataset_py": "lerobot_datasets", "data_mix": DATASET_KEY, "per_device_batch_size": 2}},
        "trainer": {"max_train_steps": STEPS, "save_interval": STEPS, "save_format": "safetensors"},
    })
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    rng = np.random.default_rng(1)
    __import__("accelerate").PartialState()  # starVLA's dataloader logs through accelerate, as in training
    save_dataset_statistics(statistics(meta["action_dim"], rng), run_dir)
    state = __import__("starvla_weights").load_state(src)  # the parity fixture's weights
    ckpt = run_dir / "checkpoints" / f"steps_{STEPS}_model.safetensors"
    save_file(state, str(ckpt))
    (run_dir / "summary.jsonl").write_text(json.dumps({"steps": STEPS}) + "\n")

    # starVLA loads it back (read_mode_config + build_framework + strict load_state_dict) ...
    # build_framework first imports every framework module (some need diffusers, not installed here);
    # QwenOFT is registered by its import above, so that step is skipped and nothing else changes.
    import starVLA.model.framework.base_framework as base_framework
    base_framework._auto_import_framework_modules = lambda: None
    model = Qwenvl_OFT.from_pretrained(str(ckpt))
    model = model.float().eval()  # starVLA builds the VLM in bf16 for CUDA autocast; float32 on the CPU here
    images = load_file(str(src / "case.safetensors"))["images"].numpy()
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": meta["instructions"][i]}
                for i in range(len(meta["instructions"]))]
    with torch.no_grad():
        normalized = np.asarray(model.predict_action(examples=examples)["normalized_actions"], dtype=np.float32)
    # ... and serves actions un-normalized with the checkpoint's statistics (its deployment's path)
    stats = FrameworkTools.get_action_stats(model.norm_stats)
    served = np.stack([FrameworkTools.unnormalize_actions(normalized[i].copy(), stats) for i in range(len(normalized))])
    # the un-normalization alone, on chunks that reach every branch (beyond [-1, 1], gripper above
    # and below 0.5, an unmasked dimension): starVLA's function's output for them
    probe = rng.uniform(-1.6, 1.6, size=(3, meta["horizon"], meta["action_dim"])).astype(np.float32)
    probe_served = np.stack([FrameworkTools.unnormalize_actions(c.copy(), stats) for c in probe])
    # the observations' images are the parity case's (not stored again: expected.json's images_from)
    save_file({"probe_normalized": torch.from_numpy(probe).contiguous(),
               "probe_served": torch.from_numpy(probe_served.astype(np.float32)).contiguous(),
               "normalized_actions": torch.from_numpy(normalized).contiguous(),
               "actions": torch.from_numpy(served.astype(np.float32)).contiguous()}, str(out / "expected.safetensors"))
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    ckpt.unlink()  # rebuilt by the tests from qwenoft/state.json (module docstring)
    (run_dir / "checkpoints" / ".keep").write_text("")
    (out / "expected.json").write_text(json.dumps({
        "framework": "QwenOFT", "starvla_commit": commit, "checkpoint": f"ckpt/checkpoints/{ckpt.name}",
        "checkpoint_sha256": digest, "checkpoint_from": "qwenoft/state.json (its tensors in weights/; save_file, no metadata)",
        "base_vlm": "tests/fixtures/starvla/qwenoft/vlm (config.yaml names the scratch folder it was built in)",
        "images_from": "qwenoft/case.safetensors",
        "instructions": meta["instructions"], "dataset_key": DATASET_KEY,
        "made_by": "starVLA from_pretrained + predict_action + FrameworkTools.unnormalize_actions, float32 CPU",
        "torch": torch.__version__,
    }, indent=2) + "\n")
    print(f"wrote {out}; normalized range [{normalized.min():.3f}, {normalized.max():.3f}]")


if __name__ == "__main__":
    main()
