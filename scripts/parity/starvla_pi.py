"""Parity fixtures for starVLA's QwenPI_v3 (and QwenPI) from starVLA's own code (run OUTSIDE the
package, in the side virtual environment of starvla.py; it also needs `diffusers`, which starVLA's
DiT imports).

Builds starVLA's QwenPI_v3 framework (starVLA/model/framework/VLM4A/QwenPI_v3.py: the VLM's
per-layer hidden states, one LayerNorm + Linear projector per layer, and the layer-wise
cross-attention DiT flow-matching head of LayerwiseFM_ActionHeader.py) on a tiny Qwen3-VL (or
Qwen2.5-VL) with a fixed seed, runs its training forward and its predict_action on a fixed batch,
and writes under tests/fixtures/starvla/<name>/:

  vlm/                    the tiny VLM's config, tokenizer and processor (no weights)
  state.json              the framework's state_dict, every weight a bfloat16 number (starvla.bf16_values)
                          (float32, keys as starVLA names them; its tensors in the shared weights/ store, bench/starvla_weights.py): the tiny VLM's
                          tensors are the QwenOFT fixture's, stored once
  case.safetensors        inputs (uint8 images, actions), the noise and times starVLA drew (recorded,
                          see below), and outputs (loss, predicted actions, the prompt's token ids)
  case.json               instructions, sizes, the seeds, starVLA commit, how the case was made

Randomness: the training forward draws the flow-matching noise (torch.randn) and the times
(Beta(1.5, 1) through LayerwiseFlowmatchingActionHead.sample_time), predict_action draws the
starting noise (torch.randn). The script seeds torch's global generator right before each call
(case.json: train_seed, predict_seed) and records what was drawn by wrapping torch.randn and
sample_time while the call runs; the wrappers return what the wrapped functions return.

Usage (see scripts/parity/README.md):
  /tmp/starvla-venv/bin/python scripts/parity/starvla_pi.py --starvla /tmp/starvla [--vlm qwen3|qwen25]
      [--framework QwenPI_v3|QwenPI]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starvla import (ACTION_DIM, HORIZON, INSTRUCTIONS, SEED, STATE_DIM, VIEWS, bf16_values, open_starvla,  # noqa: E402
                     save_model_and_case, tiny_qwen3_vl)

DIT_WIDTH = 32  # action_dit_hidden_dim: below the tiny VLM's 64, so QwenPI_v3's projectors are real layers
HEAD_DIM = 8  # attention_head_dim: 4 DiT heads
MAX_SEQ_LEN = 64  # rows of the head's position table (starVLA's default 1024: a smaller fixture, same math)
REPEATS = 2  # trainer.repeated_diffusion_steps (starVLA's QwenPI_v3 reads it from the trainer section)
TRAIN_SEED = 1234
PREDICT_SEED = 4321
FRAMEWORKS = {"QwenPI_v3": ("starVLA.model.framework.VLM4A.QwenPI_v3", "Qwen_PI_v3"),
              "QwenPI": ("starVLA.model.framework.VLM4A.QwenPI", "Qwen_PI")}


def build(framework: str, vlm_dir: Path, head_dim: int = HEAD_DIM):
    """starVLA's framework on the tiny VLM in `vlm_dir`, built after seeding with SEED. QwenPI_v3
    gets action_dit_hidden_dim = DIT_WIDTH; QwenPI runs its DiT at the VLM's width (no projector)."""
    import importlib

    from omegaconf import OmegaConf

    module, cls = FRAMEWORKS[framework]
    dit = {"attention_head_dim": head_dim}
    if framework == "QwenPI_v3":
        dit["action_dit_hidden_dim"] = DIT_WIDTH
    cfg = OmegaConf.create({
        "framework": {
            "name": framework,
            "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
            "action_model": {"action_model_type": "LayerwiseFM", "action_dim": ACTION_DIM, "state_dim": STATE_DIM,
                             "action_horizon": HORIZON, "max_seq_len": MAX_SEQ_LEN, "diffusion_model_cfg": dit},
        },
        "datasets": {"vla_data": {}},
        "trainer": {"repeated_diffusion_steps": REPEATS},
    })
    torch.manual_seed(SEED)
    return getattr(importlib.import_module(module), cls)(cfg)


class Recorder:
    """Wraps torch.randn and the head's sample_time while a call runs, keeping what they return."""

    def __init__(self, head):
        self.head, self.noise, self.times = head, [], []

    def __enter__(self):
        randn, sample_time = torch.randn, self.head.sample_time

        def recording_randn(*a, **k):
            out = randn(*a, **k)
            self.noise.append(out.detach().clone())
            return out

        def recording_sample_time(*a, **k):
            out = sample_time(*a, **k)
            self.times.append(out.detach().clone())
            return out

        self._randn = randn
        torch.randn, self.head.sample_time = recording_randn, recording_sample_time
        return self

    def __exit__(self, *exc):
        torch.randn = self._randn
        del self.head.sample_time  # back to the class's method


def run_case(model, examples, images) -> dict:
    """starVLA's training loss and predict_action's actions on the examples, the noise and times
    they drew, and the token ids / attention mask its VLM was fed."""
    seen = {}
    interface = model.qwen_vl_interface
    build_inputs = interface.build_qwenvl_inputs

    def recording_build(*a, **k):
        seen.setdefault("inputs", build_inputs(*a, **k))
        return seen["inputs"]

    interface.build_qwenvl_inputs = recording_build
    try:
        torch.manual_seed(TRAIN_SEED)
        with Recorder(model.action_model) as train:
            loss = model(examples)["action_loss"].detach()
    finally:
        del interface.build_qwenvl_inputs
    assert len(train.noise) == 1 and len(train.times) == 1, (len(train.noise), len(train.times))
    torch.manual_seed(PREDICT_SEED)
    with Recorder(model.action_model) as infer:
        predicted = model.predict_action(examples=[
            {"image": list(images[i]), **{k: e[k] for k in ("lang", "state") if k in e}}
            for i, e in enumerate(examples)])["normalized_actions"]
    assert len(infer.noise) == 1 and not infer.times, (len(infer.noise), len(infer.times))
    inputs = seen["inputs"]
    return {"loss": loss.float().reshape(()),
            "predicted_actions": torch.from_numpy(np.asarray(predicted, dtype=np.float32)),
            "train_noise": train.noise[0].float().contiguous(), "train_time": train.times[0].float().contiguous(),
            "predict_noise": infer.noise[0].float().contiguous(),
            "input_ids": inputs["input_ids"].long().contiguous(),
            "attention_mask": inputs["attention_mask"].long().contiguous()}


VLM_KEYS = "qwen_vl_interface."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True, help="a checkout of github.com/starVLA/starVLA")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"))
    ap.add_argument("--work", default="/tmp/starvla-parity-pi", help="scratch folder for the tiny checkpoint")
    ap.add_argument("--vlm", choices=("qwen3", "qwen25"), default="qwen3")
    ap.add_argument("--framework", choices=tuple(FRAMEWORKS), default="QwenPI_v3")
    args = ap.parse_args()
    qwen25 = args.vlm == "qwen25"
    # diffusers (starVLA's DiT) checks for torchvision when it is first imported: import it before
    # open_starvla puts the torchvision stub in place, so it sees torchvision as absent
    import diffusers.models.attention  # noqa: F401
    import diffusers.models.embeddings  # noqa: F401
    commit, interface = open_starvla(args.starvla, "QWen2_5" if qwen25 else "QWen3")
    from PIL import Image
    from safetensors.torch import save_file

    # starVLA picks its VLM interface from the folder's name; Qwen2.5-VL's resizes images to multiples
    # of 28 pixels (qwen_vl_utils), so its images are 56 x 56 (left as they are), Qwen3-VL's 64 x 64
    size = 56 if qwen25 else 64
    vlm_dir = tiny_qwen3_vl(Path(args.work) / ("tiny-Qwen2.5-VL" if qwen25 else "tiny-Qwen3-VL"),
                            "qwen2_5_vl" if qwen25 else "qwen3_vl")
    model = build(args.framework, vlm_dir)
    if qwen25:
        assert type(model.qwen_vl_interface) is interface._QWen_VL_Interface, type(model.qwen_vl_interface)
    # starVLA loads the VLM in bfloat16; the fixture is float32 on the CPU (the bf16-rounded VLM
    # weights are what is saved). eval(): the DiT's dropout (p = 0.2) off, as for any comparison.
    # The head's weights are rounded to bfloat16 numbers too (starvla.bf16_values).
    model = bf16_values(model.float().eval())

    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(len(INSTRUCTIONS), VIEWS, size, size, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, size=(len(INSTRUCTIONS), HORIZON, ACTION_DIM)).astype(np.float32)
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": INSTRUCTIONS[i], "action": actions[i]}
                for i in range(len(INSTRUCTIONS))]
    plain = run_case(model, examples, images)
    # a proprioceptive state in the examples: QwenPI_v3 writes it into the prompt as 256 bins (and
    # drops the tensor); QwenPI feeds it to the head's state encoder (a token before the actions)
    states = rng.uniform(-0.95, 0.95, size=(len(INSTRUCTIONS), 1, STATE_DIM)).astype(np.float32)
    with_state = run_case(model, [{**e, "state": states[i]} for i, e in enumerate(examples)], images)
    with_state["state"] = torch.from_numpy(states[:, 0])

    name = {"QwenPI_v3": "qwenpi_v3", "QwenPI": "qwenpi"}[args.framework] + ("_qwen25" if qwen25 else "")
    out = Path(args.out) / name
    save_model_and_case(out, model, vlm_dir, commit, images, actions, plain)
    save_file(with_state, str(out / "case_state.safetensors"))
    head = model.action_model
    dit = head.model.config
    (out / "case.json").write_text(json.dumps({
        "framework": args.framework, "starvla_repo": "github.com/starVLA/starVLA", "starvla_commit": commit,
        "vlm": f"tiny {'Qwen2.5-VL' if qwen25 else 'Qwen3-VL'} (graphvla.blocks.backbones.tiny_hf config, tokenizer + "
               "placeholder token)",
        "vlm_interface": f"{type(model.qwen_vl_interface).__module__}.{type(model.qwen_vl_interface).__name__}",
        "seed": SEED, "train_seed": TRAIN_SEED, "predict_seed": PREDICT_SEED, "horizon": HORIZON,
        "action_dim": ACTION_DIM, "state_dim": STATE_DIM, "views": VIEWS, "image_size": size,
        "instructions": INSTRUCTIONS, "dtype": "float32", "device": "cpu",
        "dit_width": int(dit.num_attention_heads * dit.attention_head_dim), "attention_head_dim": int(dit.attention_head_dim),
        "dit_layers": int(dit.num_layers), "interleave_self_attention": bool(head.model._interleave_self_attention),
        # the repeats the framework used (QwenPI_v3 reads trainer.repeated_diffusion_steps; QwenPI always 2)
        "repeated_diffusion_steps": int(plain["train_noise"].shape[0]) // len(INSTRUCTIONS), "num_inference_timesteps": int(head.num_inference_timesteps),
        "future_tokens": int(head.future_tokens.weight.shape[0]), "max_seq_len": int(head.position_embedding.weight.shape[0]),
        "dit_output_dim": int(dit.output_dim),
        "loss": float(plain["loss"]), "loss_state": float(with_state["loss"]), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "diffusers": __import__("diffusers").__version__,
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}: loss {float(plain['loss']):.6f} (with state {float(with_state['loss']):.6f})")


if __name__ == "__main__":
    main()
