"""A tiny starVLA QwenPI_v3 checkpoint written the way starVLA's trainer writes one, and what starVLA
serves from it (run OUTSIDE the package, in the side virtual environment of starvla_pi.py).

The sibling of starvla_ckpt.py (QwenOFT) for QwenPI_v3: the trainer's layout (config.yaml,
dataset_statistics.json, checkpoints/steps_N_model.safetensors) for the weights of
tests/fixtures/starvla/qwenpi_v3/state.json (starVLA's own QwenPI_v3 initialisation, see
starvla_pi.py; config.yaml carries the same action_model settings), loaded back with starVLA's own
`from_pretrained`, `predict_action` on the fixture's two observations from a seeded generator (the
starting noise it drew is recorded by wrapping torch.randn while it runs) and starVLA's
`FrameworkTools.unnormalize_actions`; then the same with a state in each observation (QwenPI_v3
writes it into the prompt: a run trained with datasets.vla_data.include_state), from its own seed. Output: tests/fixtures/starvla/qwenpi_v3_ckpt/ (ckpt/ is the
checkpoint folder, expected.safetensors and expected.json what starVLA served).

Usage: /tmp/starvla-venv/bin/python scripts/parity/starvla_pi_ckpt.py --starvla /tmp/starvla
(after starvla_pi.py has written tests/fixtures/starvla/qwenpi_v3 and its tiny VLM in --work).
`--framework QwenPI` does the same for starVLA's QwenPI (tests/fixtures/starvla/qwenpi, after
`starvla_pi.py --framework QwenPI`) into qwenpi_ckpt/, both observations carrying a state (QwenPI
feeds it to its head's state encoder). Either way the weights are the parity fixture's state
(state.json, read from the weights store as the tests read it)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starvla import open_starvla  # noqa: E402
from starvla_ckpt import DATASET_KEY, STEPS, statistics  # noqa: E402
from starvla_pi import HEAD_DIM, MAX_SEQ_LEN, PREDICT_SEED, REPEATS, Recorder  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True)
    fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"
    ap.add_argument("--fixtures", default=str(fixtures))
    ap.add_argument("--work", default="/tmp/starvla-parity-pi")
    ap.add_argument("--framework", choices=("QwenPI_v3", "QwenPI"), default="QwenPI_v3")
    args = ap.parse_args()
    v3 = args.framework == "QwenPI_v3"
    import diffusers.models.attention  # noqa: F401 - before the torchvision stub (see starvla_pi.py)
    import diffusers.models.embeddings  # noqa: F401
    commit, _ = open_starvla(args.starvla, "QWen3")
    from omegaconf import OmegaConf
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from starVLA.dataloader import save_dataset_statistics
    from starVLA.model.framework.VLM4A.QwenPI import Qwen_PI
    from starVLA.model.framework.VLM4A.QwenPI_v3 import Qwen_PI_v3
    from starVLA.model.tools import FrameworkTools

    src = Path(args.fixtures) / ("qwenpi_v3" if v3 else "qwenpi")
    meta = json.loads((src / "case.json").read_text())
    vlm_dir = Path(args.work) / "tiny-Qwen3-VL"
    assert (vlm_dir / "config.json").is_file(), f"run starvla_pi.py first (it writes {vlm_dir})"
    out = Path(args.fixtures) / (src.name + "_ckpt")
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "ckpt"
    (run_dir / "checkpoints").mkdir(parents=True)

    cfg = OmegaConf.create({
        "run_id": f"tiny_{src.name}", "output_dir": str(run_dir), "seed": 42,
        "framework": {"name": args.framework, "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
                      "action_model": {"action_model_type": "LayerwiseFM", "action_dim": meta["action_dim"],
                                       "state_dim": meta["state_dim"], "action_horizon": meta["horizon"],
                                       "max_seq_len": MAX_SEQ_LEN,
                                       "diffusion_model_cfg": ({"action_dit_hidden_dim": meta["dit_width"]} if v3 else {})
                                       | {"attention_head_dim": HEAD_DIM}}},
        "datasets": {"vla_data": {"dataset_py": "lerobot_datasets", "data_mix": DATASET_KEY, "per_device_batch_size": 2}},
        "trainer": {"max_train_steps": STEPS, "save_interval": STEPS, "save_format": "safetensors",
                    "repeated_diffusion_steps": REPEATS},
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
    # QwenPI_v3 is registered by its import above, so that step is skipped and nothing else changes.
    import starVLA.model.framework.base_framework as base_framework
    base_framework._auto_import_framework_modules = lambda: None
    model = (Qwen_PI_v3 if v3 else Qwen_PI).from_pretrained(str(ckpt)).float().eval()
    images = load_file(str(src / "case.safetensors"))["images"].numpy()
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": meta["instructions"][i]}
                for i in range(len(meta["instructions"]))]
    state = None
    if not v3:  # QwenPI: a state for its head's state encoder, as starVLA's predict_action takes it
        state = np.random.default_rng(2).uniform(-0.9, 0.9, size=(len(examples), meta["state_dim"])).astype(np.float32)
        examples = [{**e, "state": state[i][None]} for i, e in enumerate(examples)]
    torch.manual_seed(PREDICT_SEED)
    with torch.no_grad(), Recorder(model.action_model) as drawn:
        normalized = np.asarray(model.predict_action(examples=examples)["normalized_actions"], dtype=np.float32)
    assert len(drawn.noise) == 1
    stats = FrameworkTools.get_action_stats(model.norm_stats)
    served = np.stack([FrameworkTools.unnormalize_actions(normalized[i].copy(), stats) for i in range(len(normalized))])
    extra = {}
    if v3:  # the same observations with a state, which QwenPI_v3 writes into the prompt (a run trained
        # with datasets.vla_data.include_state): the actions it serves then, from their own noise
        state_v3 = np.random.default_rng(3).uniform(-0.9, 0.9, size=(len(examples), meta["state_dim"])).astype(np.float32)
        torch.manual_seed(PREDICT_SEED + 1)
        with torch.no_grad(), Recorder(model.action_model) as drawn_v3:
            with_state = np.asarray(model.predict_action(examples=[{**e, "state": state_v3[i][None]}
                                                                   for i, e in enumerate(examples)])["normalized_actions"],
                                    dtype=np.float32)
        extra = {"state_prompt_state": torch.from_numpy(state_v3), "state_prompt_noise": drawn_v3.noise[0].float().contiguous(),
                 "state_prompt_actions": torch.from_numpy(np.stack([
                     FrameworkTools.unnormalize_actions(with_state[i].copy(), stats) for i in range(len(with_state))
                 ]).astype(np.float32))}
    # the observations' images are the parity case's (not stored again: expected.json's images_from)
    save_file({"noise": drawn.noise[0].float().contiguous(),
               **({} if state is None else {"state": torch.from_numpy(state)}), **extra,
               "normalized_actions": torch.from_numpy(normalized).contiguous(),
               "actions": torch.from_numpy(served.astype(np.float32)).contiguous()}, str(out / "expected.safetensors"))
    import hashlib

    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    ckpt.unlink()  # rebuilt by the tests from the parity fixture's state (module docstring)
    (run_dir / "checkpoints" / ".keep").write_text("")
    (out / "expected.json").write_text(json.dumps({
        "framework": args.framework, "starvla_commit": commit, "checkpoint": f"ckpt/checkpoints/{ckpt.name}",
        "checkpoint_sha256": digest,
        "checkpoint_from": f"{src.name}/state.json (its tensors in weights/; save_file, no metadata)",
        "base_vlm": f"tests/fixtures/starvla/{src.name}/vlm (config.yaml names the scratch folder it was built in)",
        "images_from": f"{src.name}/case.safetensors",
        "instructions": meta["instructions"], "dataset_key": DATASET_KEY, "predict_seed": PREDICT_SEED,
        "made_by": "starVLA from_pretrained + predict_action (noise recorded) + FrameworkTools.unnormalize_actions, "
                   "float32 CPU",
        "torch": torch.__version__,
    }, indent=2) + "\n")
    print(f"wrote {out}; normalized range [{normalized.min():.3f}, {normalized.max():.3f}]")


if __name__ == "__main__":
    main()
