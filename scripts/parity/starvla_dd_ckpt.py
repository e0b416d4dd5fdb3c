"""A tiny starVLA QwenDiscreteDiffusion checkpoint written the way starVLA's trainer writes one, and
what starVLA serves from it (run OUTSIDE the package, in the side virtual environment of starvla.py).

The sibling of starvla_ckpt.py (QwenOFT) for QwenDiscreteDiffusion: the trainer's layout
(config.yaml, dataset_statistics.json, checkpoints/steps_N_model.safetensors) for the weights of
tests/fixtures/starvla/qwendd/state.json (starVLA's own initialisation, see starvla_dd.py;
config.yaml carries the same action_model settings), loaded back with starVLA's own
`from_pretrained`, `predict_action` on the fixture's two observations (with their states) at its
default temperatures from the seed starvla_dd.py used (the draws, checked equal to those of
qwendd/case_predict.safetensors, are not stored again), and starVLA's
`FrameworkTools.unnormalize_actions`. Output: tests/fixtures/starvla/qwendd_ckpt/ (ckpt/ is the
checkpoint folder without its weights file, which the tests rebuild byte for byte from
qwendd/state.json; expected.safetensors and expected.json what starVLA served).

Usage: /tmp/starvla-venv/bin/python scripts/parity/starvla_dd_ckpt.py --starvla /tmp/starvla
(after starvla_dd.py has written tests/fixtures/starvla/qwendd and its tiny VLM in --work)."""
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
from starvla_ckpt import DATASET_KEY, STEPS, statistics  # noqa: E402
from starvla_dd import PREDICT_SEED, Recorder, decode_noise  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True)
    fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"
    ap.add_argument("--fixtures", default=str(fixtures))
    ap.add_argument("--work", default="/tmp/starvla-parity-dd")
    args = ap.parse_args()
    from diffusers.models import attention, embeddings  # noqa: F401 - before the torchvision stub
    commit, _ = open_starvla(args.starvla, "QWen3")
    from omegaconf import OmegaConf
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from starVLA.dataloader import save_dataset_statistics
    from starVLA.model.framework.VLM4A.QwenDiscreteDiffusion import Qwen_DiscreteDiffusion
    from starVLA.model.tools import FrameworkTools

    src = Path(args.fixtures) / "qwendd"
    meta = json.loads((src / "case.json").read_text())
    vlm_dir = Path(args.work) / "tiny-Qwen3-VL"
    assert (vlm_dir / "config.json").is_file(), f"run starvla_dd.py first (it writes {vlm_dir})"
    out = Path(args.fixtures) / "qwendd_ckpt"
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "ckpt"
    (run_dir / "checkpoints").mkdir(parents=True)

    cfg = OmegaConf.create({
        "run_id": "tiny_qwendd", "output_dir": str(run_dir), "seed": 42,
        "framework": {"name": "QwenDiscreteDiffusion",
                      "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
                      "action_model": {"action_model_type": "LayerwiseDD", "action_dim": meta["action_dim"],
                                       "state_dim": meta["state_dim"], "action_horizon": meta["horizon"],
                                       "representation": "bin", "max_seq_len": 64,
                                       "diffusion_model_cfg": {"max_num_positional_embeddings": 64}}},
        "datasets": {"vla_data": {"dataset_py": "lerobot_datasets", "data_mix": DATASET_KEY, "per_device_batch_size": 2}},
        "trainer": {"max_train_steps": STEPS, "save_interval": STEPS, "save_format": "safetensors"},
    })
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    rng = np.random.default_rng(1)
    __import__("accelerate").PartialState()  # starVLA's dataloader logs through accelerate, as in training
    save_dataset_statistics(statistics(meta["action_dim"], rng), run_dir)
    ckpt = run_dir / "checkpoints" / f"steps_{STEPS}_model.safetensors"
    save_file(__import__("starvla_weights").load_state(src), str(ckpt))  # the parity fixture's weights
    (run_dir / "summary.jsonl").write_text(json.dumps({"steps": STEPS}) + "\n")

    # starVLA loads it back (read_mode_config + build_framework + strict load_state_dict); its
    # build_framework first imports every framework module (some need packages not installed here):
    # QwenDiscreteDiffusion is registered by its import above, so that step is skipped.
    import starVLA.model.framework.base_framework as base_framework
    base_framework._auto_import_framework_modules = lambda: None
    model = Qwen_DiscreteDiffusion.from_pretrained(str(ckpt)).float().eval()
    images = load_file(str(src / "case.safetensors"))["images"].numpy()
    states = load_file(str(src / "case_state.safetensors"))["state"].numpy()
    b = len(meta["instructions"])
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": meta["instructions"][i],
                 "state": states[i][None]} for i in range(b)]
    torch.manual_seed(PREDICT_SEED)
    with torch.no_grad(), Recorder() as rec:
        normalized = np.asarray(model.predict_action(examples=examples)["normalized_actions"], dtype=np.float32)
    # the same weights, observations and seed as qwendd/case_predict: the same draws and actions, so
    # the draws are not stored twice (the tests read them from there)
    case = load_file(str(src / "case_predict.safetensors"))
    assert torch.equal(decode_noise(rec, b), case["noise"]), "the reloaded model drew differently"
    assert np.array_equal(normalized, case["actions"].numpy()), "the reloaded model decoded differently"
    stats = FrameworkTools.get_action_stats(model.norm_stats)
    served = np.stack([FrameworkTools.unnormalize_actions(normalized[i].copy(), stats) for i in range(b)])
    # the observations' images are the parity case's (not stored again: expected.json's images_from)
    save_file({"state": torch.from_numpy(states).contiguous(),
               "normalized_actions": torch.from_numpy(normalized).contiguous(),
               "actions": torch.from_numpy(served.astype(np.float32)).contiguous()}, str(out / "expected.safetensors"))
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    ckpt.unlink()  # rebuilt by the tests from qwendd/state.json (module docstring)
    (run_dir / "checkpoints" / ".keep").write_text("")
    (out / "expected.json").write_text(json.dumps({
        "framework": "QwenDiscreteDiffusion", "starvla_commit": commit, "checkpoint": f"ckpt/checkpoints/{ckpt.name}",
        "checkpoint_sha256": digest, "checkpoint_from": "qwendd/state.json (its tensors in weights/; save_file, no metadata)",
        "base_vlm": "tests/fixtures/starvla/qwendd/vlm (config.yaml names the scratch folder it was built in)",
        "images_from": "qwendd/case.safetensors",
        "instructions": meta["instructions"], "dataset_key": DATASET_KEY,
        "noise": "qwendd/case_predict.safetensors (the same draws, checked)",
        "made_by": "starVLA from_pretrained + predict_action + FrameworkTools.unnormalize_actions, "
                   "float32 CPU",
        "torch": torch.__version__,
    }, indent=2) + "\n")
    print(f"wrote {out}; normalized range [{normalized.min():.3f}, {normalized.max():.3f}]")


if __name__ == "__main__":
    main()
