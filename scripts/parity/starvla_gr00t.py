"""Parity fixtures for starVLA's QwenGR00T from starVLA's own code (run OUTSIDE the package, in a side
virtual environment; helpers from scripts/parity/starvla.py).

Builds starVLA's QwenGR00T (starVLA/model/framework/VLM4A/QwenGR00T.py, its FlowmatchingActionHead and
cross-attention DiT) on a tiny Qwen3-VL (or Qwen2.5-VL) with a fixed seed, runs its training forward
and its predict_action on a fixed batch, without and with a proprioceptive state, and writes under
tests/fixtures/starvla/qwengr00t/ (qwengr00t_qwen25/ for --vlm qwen25):

  vlm/                    the tiny VLM's config, tokenizer and processor (no weights)
  state.json              QwenGR00T's whole state_dict, every weight a bfloat16 number (starvla.bf16_values)
                          (float32, keys as starVLA names them; its tensors in the shared weights/ store, bench/starvla_weights.py)
  case.safetensors        inputs, the randomness starVLA drew and its outputs (no state)
  case_state.safetensors  the same with a state [B, 1, S] in the examples
  case_cot.safetensors    the same with starVLA's datasets.vla_data.CoT_prompt set (no state)
  case.json               sizes, instructions, the DiT config, starVLA commit

The DiT is starVLA's at a tiny width: starVLA sizes it from a table (GR00T_ActionHeader.DiTConfig:
DiT-B, DiT-L) that this script extends with one entry, "DiT-tiny" (width 32, 4 heads of 8); every
other number is the framework's config (QwenGR00TDefaultConfig merged with the overrides below).

The randomness is recorded, not re-implemented: the action head's forward and predict_action are
wrapped; each saves torch's RNG state, runs unchanged, and the noise it drew first (torch.randn of the
repeated action chunk, or of [B, H, A] in predict_action) is re-drawn from the saved state. The
times come from wrapping its sample_time. Everything runs in float32 on the CPU, in eval mode (no
dropout). Usage: python3 scripts/parity/starvla_gr00t.py --starvla /tmp/starvla [--vlm qwen25]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starvla import (COT_PROMPT, INSTRUCTIONS, SEED, VIEWS, bf16_values, open_starvla, save_model_and_case,  # noqa: E402
                     tiny_qwen3_vl)

HORIZON = 4
ACTION_DIM = 7
STATE_DIM = 8
REPEATS = 3
TINY_DIT = {"input_embedding_dim": 32, "attention_head_dim": 8, "num_attention_heads": 4}
ACTION_MODEL = {
    "action_model_type": "DiT-tiny", "hidden_size": 24, "add_pos_embed": True, "max_seq_len": 16,
    "action_dim": ACTION_DIM, "state_dim": STATE_DIM, "action_horizon": HORIZON, "repeated_diffusion_steps": REPEATS,
    "num_inference_timesteps": 4, "num_target_vision_tokens": 3,
    "diffusion_model_cfg": {"num_attention_heads": 4, "attention_head_dim": 8, "num_layers": 4, "output_dim": 20, "dropout": 0.2, "final_dropout": True,
                            "interleave_self_attention": True, "norm_type": "ada_norm", "positional_embeddings": None},
}


def build_qwengr00t(vlm_dir: Path):
    """starVLA's QwenGR00T on the tiny VLM in `vlm_dir`, built after seeding with SEED."""
    from omegaconf import OmegaConf
    from starVLA.model.framework.VLM4A.QwenGR00T import Qwen_GR00T
    from starVLA.model.modules.action_model import GR00T_ActionHeader

    GR00T_ActionHeader.DiTConfig["DiT-tiny"] = dict(TINY_DIT)
    cfg = OmegaConf.create({
        "framework": {"name": "QwenGR00T", "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
                      "action_model": ACTION_MODEL},
        "datasets": {"vla_data": {}},
    })
    torch.manual_seed(SEED)
    return Qwen_GR00T(cfg)


def run_case(model, examples, images) -> dict:
    """starVLA's loss (forward) and actions (predict_action), the VLM inputs it built, the context
    the head got and the noise and times it drew (recorded around the unchanged methods)."""
    seen = {}
    head, interface = model.action_model, model.qwen_vl_interface
    build, forward, predict, sample_time = (interface.build_qwenvl_inputs, head.forward, head.predict_action,
                                            head.sample_time)

    def recording_build(*a, **k):
        seen.setdefault("inputs", build(*a, **k))
        return seen["inputs"]

    def recording_forward(vl_embs, actions, state=None, encoder_attention_mask=None):
        rng = torch.get_rng_state()
        loss = forward(vl_embs, actions, state, encoder_attention_mask=encoder_attention_mask)
        after = torch.get_rng_state()
        torch.set_rng_state(rng)
        seen["train_noise"] = torch.randn(actions.shape, device=actions.device, dtype=actions.dtype)
        torch.set_rng_state(after)
        seen["context"] = vl_embs[: len(examples)].detach().clone()
        return loss

    def recording_sample_time(*a, **k):
        seen["train_time"] = sample_time(*a, **k)
        return seen["train_time"]

    def recording_predict(vl_embs, state=None, encoder_attention_mask=None):
        rng = torch.get_rng_state()
        out = predict(vl_embs, state, encoder_attention_mask=encoder_attention_mask)
        after = torch.get_rng_state()
        torch.set_rng_state(rng)
        seen["noise"] = torch.randn((vl_embs.shape[0], head.action_horizon, head.action_dim), dtype=vl_embs.dtype)
        torch.set_rng_state(after)
        return out

    interface.build_qwenvl_inputs = recording_build
    head.forward, head.predict_action, head.sample_time = recording_forward, recording_predict, recording_sample_time
    try:
        loss = model(examples)["action_loss"].detach()
        predicted = model.predict_action(examples=[{"image": list(images[i]), **{k: e[k] for k in ("lang", "state") if k in e}}
                                                   for i, e in enumerate(examples)])["normalized_actions"]
    finally:
        del interface.build_qwenvl_inputs, head.forward, head.predict_action, head.sample_time
    inputs = seen["inputs"]
    return {"loss": loss.float().reshape(()), "predicted_actions": torch.from_numpy(np.asarray(predicted, dtype=np.float32)),
            "train_noise": seen["train_noise"].float().contiguous(), "train_time": seen["train_time"].float().contiguous(),
            "noise": seen["noise"].float().contiguous(), "context": seen["context"].float().contiguous(),
            "input_ids": inputs["input_ids"].long().contiguous(), "attention_mask": inputs["attention_mask"].long().contiguous()}


CKPT_SEEDS = [11, 12]  # torch's seed before each observation's predict_action (a served session's seed)


def write_ckpt(fixtures: Path, work: Path, qwen25: bool = False) -> None:
    """tests/fixtures/starvla/qwengr00t_ckpt/ (qwengr00t_qwen25_ckpt/ from qwengr00t_qwen25/ with
    qwen25): a QwenGR00T run folder as starVLA's trainer writes it
    (ckpt/config.yaml, ckpt/dataset_statistics.json; its weights file checkpoints/steps_2_model.safetensors
    is qwengr00t/state.json's state dict saved again, so it is not stored twice: the test rebuilds it),
    loaded back with starVLA's from_pretrained, and what starVLA serves for two observations (the
    second with a state): predict_action after torch.manual_seed(seed) per observation, then
    FrameworkTools.unnormalize_actions (expected.safetensors)."""
    from omegaconf import OmegaConf
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from starvla_ckpt import DATASET_KEY, STEPS, statistics
    from starvla_weights import load_state
    from starVLA.dataloader import save_dataset_statistics
    from starVLA.model.framework.VLM4A.QwenGR00T import Qwen_GR00T
    from starVLA.model.modules.action_model import GR00T_ActionHeader
    from starVLA.model.tools import FrameworkTools

    from graphvla.fileio import sha256_of

    GR00T_ActionHeader.DiTConfig["DiT-tiny"] = dict(TINY_DIT)
    name = "qwengr00t_qwen25" if qwen25 else "qwengr00t"
    src = fixtures / name
    meta = json.loads((src / "case.json").read_text())
    vlm_dir = work / ("tiny-Qwen2.5-VL" if qwen25 else "tiny-Qwen3-VL")
    assert (vlm_dir / "config.json").is_file(), f"run this script without --ckpt first (it writes {vlm_dir})"
    out = fixtures / f"{name}_ckpt"
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    run_dir = out / "ckpt"
    (run_dir / "checkpoints").mkdir(parents=True)
    cfg = OmegaConf.create({
        "run_id": "tiny_qwengr00t", "output_dir": str(run_dir), "seed": 42,
        "framework": {"name": "QwenGR00T", "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
                      "action_model": ACTION_MODEL},
        "datasets": {"vla_data": {"dataset_py": "lerobot_datasets", "data_mix": DATASET_KEY, "per_device_batch_size": 2}},
        "trainer": {"max_train_steps": STEPS, "save_interval": STEPS, "save_format": "safetensors"},
    })
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    rng = np.random.default_rng(1)
    __import__("accelerate").PartialState()  # starVLA's dataloader logs through accelerate, as in training
    save_dataset_statistics(statistics(ACTION_DIM, rng), run_dir)
    ckpt = run_dir / "checkpoints" / f"steps_{STEPS}_model.safetensors"
    save_file(load_state(src), str(ckpt))  # the parity fixture's weights (save_file, no metadata)
    (run_dir / "summary.jsonl").write_text(json.dumps({"steps": STEPS}) + "\n")

    import starVLA.model.framework.base_framework as base_framework
    base_framework._auto_import_framework_modules = lambda: None  # QwenGR00T is registered by its import above
    model = Qwen_GR00T.from_pretrained(str(ckpt)).float().eval()
    data = load_file(str(src / "case.safetensors"))
    images = data["images"].numpy()
    states = rng.uniform(-1, 1, size=(1, STATE_DIM)).astype(np.float32)
    normalized, noises = [], []
    for i, seed in enumerate(CKPT_SEEDS):
        example = {"image": [Image.fromarray(v) for v in images[i]], "lang": meta["instructions"][i]}
        if i == 1:
            example["state"] = states
        torch.manual_seed(seed)
        noises.append(torch.randn((1, HORIZON, ACTION_DIM)))  # what predict_action draws first, re-drawn
        torch.manual_seed(seed)
        with torch.no_grad():
            normalized.append(np.asarray(model.predict_action(examples=[example])["normalized_actions"], dtype=np.float32)[0])
    normalized = np.stack(normalized)
    stats = FrameworkTools.get_action_stats(model.norm_stats)
    served = np.stack([FrameworkTools.unnormalize_actions(c.copy(), stats) for c in normalized])
    digest = sha256_of(ckpt)
    ckpt.unlink()  # stored once, as {name}/state.json; tests/starvla_ckpt.py rebuilds it
    (run_dir / "checkpoints" / ".keep").write_text("")
    # the observations' images are the parity case's (not stored again: expected.json's images_from)
    save_file({"state": torch.from_numpy(states),
               "noise": torch.cat(noises).contiguous(), "normalized_actions": torch.from_numpy(normalized).contiguous(),
               "actions": torch.from_numpy(served.astype(np.float32)).contiguous()}, str(out / "expected.safetensors"))
    (out / "expected.json").write_text(json.dumps({
        "framework": "QwenGR00T", "starvla_commit": meta["starvla_commit"],
        "checkpoint": f"ckpt/checkpoints/{ckpt.name}", "checkpoint_sha256": digest,
        "checkpoint_from": f"{name}/state.json (its tensors in weights/; save_file, no metadata)",
        "base_vlm": f"tests/fixtures/starvla/{name}/vlm (config.yaml names the scratch folder it was built in)",
        "images_from": f"{name}/case.safetensors",
        "instructions": meta["instructions"][: len(CKPT_SEEDS)], "seeds": CKPT_SEEDS, "state_on": [1],
        "dataset_key": DATASET_KEY, "dit": {"DiT-tiny": TINY_DIT},
        "made_by": "starVLA from_pretrained + predict_action (torch.manual_seed(seed) first) + "
                   "FrameworkTools.unnormalize_actions, float32 CPU",
        "torch": torch.__version__,
    }, indent=2) + "\n")
    print(f"wrote {out}; normalized range [{normalized.min():.3f}, {normalized.max():.3f}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True, help="a checkout of github.com/starVLA/starVLA")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"))
    ap.add_argument("--work", default="/tmp/starvla-parity", help="scratch folder for the tiny checkpoint")
    ap.add_argument("--vlm", choices=("qwen3", "qwen25"), default="qwen3",
                    help="qwen3: tiny Qwen3-VL -> qwengr00t/; qwen25: tiny Qwen2.5-VL (starVLA's Qwen2.5-VL interface, "
                         "56 x 56 images so its qwen_vl_utils resize is a no-op) -> qwengr00t_qwen25/")
    ap.add_argument("--ckpt", action="store_true", help="write qwengr00t_ckpt/ (a trainer's run folder and what "
                                                         "starVLA serves from it) from qwengr00t/ (with --vlm qwen25: "
                                                         "qwengr00t_qwen25_ckpt/ from qwengr00t_qwen25/)")
    args = ap.parse_args()
    qwen25 = args.vlm == "qwen25"
    # diffusers (the DiT's attention and embeddings) probes for torchvision when first imported: import
    # it before open_starvla stubs torchvision, so it sees torchvision absent, as it is
    import diffusers  # noqa: F401
    from diffusers import ConfigMixin, ModelMixin  # noqa: F401
    from diffusers.models import attention, embeddings  # noqa: F401
    commit, interface = open_starvla(args.starvla, "QWen2_5" if qwen25 else "QWen3")
    if args.ckpt:
        return write_ckpt(Path(args.out), Path(args.work), qwen25)
    from PIL import Image
    from safetensors.torch import save_file

    size = 56 if qwen25 else 64
    # starVLA picks the VLM interface from the folder's name
    vlm_dir = (tiny_qwen3_vl(Path(args.work) / "tiny-Qwen2.5-VL", "qwen2_5_vl") if qwen25
               else tiny_qwen3_vl(Path(args.work) / "tiny-Qwen3-VL"))
    model = build_qwengr00t(vlm_dir)
    interface_class = "_QWen_VL_Interface" if qwen25 else "_QWen3_VL_Interface"
    assert type(model.qwen_vl_interface) is getattr(interface, interface_class), type(model.qwen_vl_interface)
    model = model.float().eval()  # starVLA loads the VLM in bf16 for CUDA autocast; the fixture is fp32 on CPU
    bf16_values(model)  # the head's weights rounded to bfloat16 numbers too (starvla.bf16_values)

    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(len(INSTRUCTIONS), VIEWS, size, size, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, size=(len(INSTRUCTIONS), HORIZON, ACTION_DIM)).astype(np.float32)
    states = rng.uniform(-1, 1, size=(len(INSTRUCTIONS), 1, STATE_DIM)).astype(np.float32)
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": INSTRUCTIONS[i], "action": actions[i]}
                for i in range(len(INSTRUCTIONS))]
    torch.manual_seed(SEED + 1)
    plain = run_case(model, examples, images)
    with_state = run_case(model, [{**e, "state": states[i]} for i, e in enumerate(examples)], images)
    with_state["state"] = torch.from_numpy(states)
    model.config.datasets.vla_data.CoT_prompt = COT_PROMPT  # read by build_qwenvl_inputs on every call
    cot = run_case(model, examples, images)
    del model.config.datasets.vla_data.CoT_prompt

    out = Path(args.out) / ("qwengr00t_qwen25" if qwen25 else "qwengr00t")
    save_model_and_case(out, model, vlm_dir, commit, images, actions, plain)
    save_file(with_state, str(out / "case_state.safetensors"))
    save_file(cot, str(out / "case_cot.safetensors"))
    fw = model.config.framework.action_model
    (out / "case.json").write_text(json.dumps({
        "framework": "QwenGR00T", "starvla_repo": "github.com/starVLA/starVLA", "starvla_commit": commit,
        "vlm": f"tiny {'Qwen2.5-VL' if qwen25 else 'Qwen3-VL'} (graphvla.blocks.backbones.tiny_hf config)",
        "vlm_interface": f"{interface.__name__}.{interface_class}",
        "seed": SEED, "horizon": HORIZON, "action_dim": ACTION_DIM, "state_dim": STATE_DIM, "views": VIEWS,
        "image_size": size, "instructions": INSTRUCTIONS, "repeated_diffusion_steps": REPEATS,
        "dit": {"DiT-tiny": TINY_DIT}, "action_model": json.loads(json.dumps(
            __import__("omegaconf").OmegaConf.to_container(fw, resolve=True), default=str)),
        "cot_prompt": COT_PROMPT, "dtype": "float32", "device": "cpu", "loss": float(plain["loss"]),
        "loss_state": float(with_state["loss"]), "loss_cot": float(cot["loss"]),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "diffusers": __import__("diffusers").__version__,
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}: loss {float(plain['loss']):.6f} (with state {float(with_state['loss']):.6f})")


if __name__ == "__main__":
    main()
