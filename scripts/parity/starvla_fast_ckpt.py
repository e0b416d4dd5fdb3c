"""A tiny starVLA QwenFast checkpoint written the way starVLA's trainer writes one, and what starVLA
serves from it (run OUTSIDE the package, in the side virtual environment; see README.md).

The QwenFast sibling of starvla_ckpt.py: after starvla_fast.py (it reuses its weights, its tiny
"-Action" VLM and its FAST tokenizer folder in --work), it writes tests/fixtures/starvla/qwenfast_ckpt/ckpt/
(config.yaml by OmegaConf.save, dataset_statistics.json by starVLA's save_dataset_statistics,
checkpoints/steps_2_model.safetensors), loads it back with starVLA's own Qwenvl_Fast.from_pretrained,
runs predict_action on the fixture's observations and un-normalizes with
FrameworkTools.unnormalize_actions: expected.safetensors holds what a starVLA deployment serves.
The weights file is qwenfast/state.json's state dict saved again, so it is not stored twice: after starVLA
has loaded it the script records its sha256 in expected.json (checkpoint_sha256, checkpoint_from) and
removes it; tests/starvla_ckpt.py rebuilds it byte for byte.
The FAST tokenizer is not part of a starVLA checkpoint (QwenFast reads playground/Pretrained_models/fast):
the importer takes it with --fast-tokenizer. As in starvla_fast.py, starVLA's action-token range
constants are set to the tiny tokenizer's ids and its FAST AutoProcessor path points at the folder.

With --vlm qwen25 (after starvla_fast.py --vlm qwen25 with the same --work) it does the same from
qwenfast_qwen25/ on the tiny Qwen2.5-VL and writes tests/fixtures/starvla/qwenfast_qwen25_ckpt/.

Usage: /tmp/starvla-venv/bin/python scripts/parity/starvla_fast_ckpt.py --starvla /tmp/starvla
       [--vlm qwen25 --work /tmp/starvla-parity-fast25]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starvla import open_starvla  # noqa: E402
from starvla_ckpt import DATASET_KEY, statistics  # noqa: E402
from starvla_fast import VLMS  # noqa: E402

STEPS = 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True)
    fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"
    ap.add_argument("--fixtures", default=str(fixtures))
    ap.add_argument("--work", default="/tmp/starvla-parity-fast", help="starvla_fast.py's scratch folder")
    ap.add_argument("--vlm", choices=tuple(VLMS), default="qwen3", help="qwen25: from qwenfast_qwen25/ -> qwenfast_qwen25_ckpt/")
    args = ap.parse_args()
    module_name, _, folder_name, _, fixture = VLMS[args.vlm]
    commit, interface = open_starvla(args.starvla, module_name)
    from omegaconf import OmegaConf
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor

    import starVLA.model.framework.base_framework as base_framework
    import starVLA.model.modules.action_model.fast_ActionHeader as header
    from starVLA.dataloader import save_dataset_statistics
    from starVLA.model.framework.VLM4A.QwenFast import Qwenvl_Fast
    from starVLA.model.tools import FrameworkTools

    src = Path(args.fixtures) / fixture
    meta = json.loads((src / "case.json").read_text())
    vlm_dir, fast_dir = Path(args.work) / folder_name, Path(args.work) / "fast"
    assert (vlm_dir / "config.json").is_file() and fast_dir.is_dir(), f"run starvla_fast.py first (it writes {args.work})"
    interface._ACTION_TOKEN_MIN, interface._ACTION_TOKEN_MAX = meta["action_token_min"], meta["action_token_max"]
    header.AutoProcessor = types.SimpleNamespace(
        from_pretrained=lambda name, **kw: AutoProcessor.from_pretrained(str(fast_dir), **kw))

    out = Path(args.fixtures) / f"{fixture}_ckpt"
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "ckpt"
    (run_dir / "checkpoints").mkdir(parents=True)
    cfg = OmegaConf.create({
        "run_id": "tiny_qwenfast", "output_dir": str(run_dir), "seed": 42,
        "framework": {"name": "QwenFast", "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
                      "action_model": {"action_model_type": "FAST", "action_dim": meta["action_dim"],
                                       "action_horizon": meta["horizon"]}},
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

    # build_framework first imports every framework module (some need diffusers, not installed
    # here); QwenFast is registered by its import above, so that step is skipped
    base_framework._auto_import_framework_modules = lambda: None
    model = Qwenvl_Fast.from_pretrained(str(ckpt)).float().eval()
    images = load_file(str(src / "case.safetensors"))["images"].numpy()
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": meta["instructions"][i]}
                for i in range(len(meta["instructions"]))]
    with torch.no_grad():
        normalized = np.asarray(model.predict_action(examples=examples)["normalized_actions"], dtype=np.float32)
    stats = FrameworkTools.get_action_stats(model.norm_stats)
    served = np.stack([FrameworkTools.unnormalize_actions(normalized[i].copy(), stats) for i in range(len(normalized))])
    # the observations' images are the parity case's (not stored again: expected.json's images_from)
    save_file({"normalized_actions": torch.from_numpy(normalized).contiguous(),
               "actions": torch.from_numpy(served.astype(np.float32)).contiguous()}, str(out / "expected.safetensors"))
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    ckpt.unlink()  # rebuilt by the tests from the state fixture (module docstring)
    (run_dir / "checkpoints" / ".keep").write_text("")
    (out / "expected.json").write_text(json.dumps({
        "framework": "QwenFast", "starvla_commit": commit, "checkpoint": f"ckpt/checkpoints/{ckpt.name}",
        "checkpoint_sha256": digest, "checkpoint_from": f"{fixture}/state.json (its tensors in weights/; save_file, no metadata)",
        "base_vlm": f"tests/fixtures/starvla/{fixture}/vlm (config.yaml names the scratch folder it was built in)",
        "images_from": f"{fixture}/case.safetensors",
        "fast_tokenizer": f"tests/fixtures/starvla/{fixture}/fast", "instructions": meta["instructions"],
        "dataset_key": DATASET_KEY,
        "made_by": "starVLA from_pretrained + predict_action + FrameworkTools.unnormalize_actions, float32 CPU",
        "torch": torch.__version__,
    }, indent=2) + "\n")
    print(f"wrote {out}; normalized range [{normalized.min():.3f}, {normalized.max():.3f}]")


if __name__ == "__main__":
    main()
