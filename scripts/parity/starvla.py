"""Parity fixtures from starVLA's own code (run OUTSIDE the package, in a side virtual environment).

Builds a tiny Qwen3-VL checkpoint offline, constructs starVLA's QwenOFT framework on it with a fixed
seed, runs its training forward (L1 loss) and its predict_action on a fixed batch, and writes under
tests/fixtures/starvla/qwenoft/:

  vlm/                    the tiny Qwen3-VL config, tokenizer and processor (no weights)
  state.json              QwenOFT's whole state_dict, every weight a bfloat16 number (bf16_values)
                          (float32, keys as starVLA names them; its tensors in the shared weights/ store, bench/starvla_weights.py)
  case.safetensors        inputs (uint8 images, actions) and outputs (loss, predicted actions)
  case.json               instructions, horizon, starVLA commit, how the case was made

Usage (see scripts/parity/README.md):
  python3 scripts/parity/starvla.py --starvla /tmp/starvla [--out tests/fixtures/starvla]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

# the fixture weights format (save_state below) is bench/starvla_weights.py, which the tests read
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

ACTION_TOKEN = "\U0001F50D"  # starVLA's QwenOFT placeholder token ("magnifying glass" emoji)
SEED = 0
HORIZON = 4
ACTION_DIM = 7
STATE_DIM = 8
VIEWS = 2
SIZE = 64  # image side: a multiple of 32, so Qwen's resize leaves the images as they are
INSTRUCTIONS = ["pick up the red cube and place it in the bowl", "open the top drawer"]
# the prompt template starVLA's training files set as datasets.vla_data.CoT_prompt (second case)
COT_PROMPT = ("Your task is {instruction}. To identify the key objects for your task. "
              "Locate their bounding boxes in [x1,y1,x2,y2] format.")


def stub_torchvision():
    """starVLA's model/tools.py and trainer_tools.py import torchvision at module level for helpers
    that QwenOFT's forward/predict never call (image transforms, box_iou). torchvision is not
    installed (it would pull another torch); these stubs only satisfy the imports and fail loudly
    if anything actually uses them. No math is stubbed. transformers' own check for torchvision
    runs (and is cached) first, so transformers still sees that it is absent."""
    from transformers.utils.import_utils import is_torchvision_available

    assert not is_torchvision_available(), "torchvision is installed: no stub needed, remove stub_torchvision()"
    import transformers

    for name in ("PretrainedConfig", "PreTrainedModel", "AutoProcessor", "Qwen3VLForConditionalGeneration",
                 "Qwen3VLProcessor"):
        getattr(transformers, name)  # resolve transformers' lazy modules before the stub exists
    def unused(name):
        def fail(*a, **k):
            raise RuntimeError(f"torchvision stub: {name} was called; install torchvision in the side venv")
        return fail

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    ops = types.ModuleType("torchvision.ops")
    io = types.ModuleType("torchvision.io")  # qwen_vl_utils (Qwen2.5-VL interface) reads videos with it
    transforms.__getattr__ = lambda name: unused(f"transforms.{name}")
    io.__getattr__ = lambda name: unused(f"io.{name}")
    ops.box_iou = unused("ops.box_iou")
    tv.transforms, tv.ops, tv.io = transforms, ops, io
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms, "torchvision.ops": ops,
                        "torchvision.io": io})


def open_starvla(checkout: str, interface: str):
    """(the checkout's commit, starVLA's VLM interface module `interface`) with starVLA importable:
    its repository on sys.path, torchvision stubbed, and the interface's AutoProcessor replaced by
    the same processor class assembled from the saved tokenizer, image processor and chat template
    (AutoProcessor cannot build a Qwen-VL processor without a video processor, i.e. torchvision)."""
    import importlib

    repo = Path(checkout).resolve()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    sys.path.insert(0, str(repo))
    stub_torchvision()
    module = importlib.import_module(f"starVLA.model.modules.vlm.{interface}")
    from graphvla.processors.hf_processor import load_processor
    module.AutoProcessor = types.SimpleNamespace(from_pretrained=lambda path: load_processor(Path(path)))
    return commit, module


def tiny_qwen3_vl(folder: Path, family: str = "qwen3_vl"):
    """A tiny Qwen3-VL (or Qwen2.5-VL: family "qwen2_5_vl") checkpoint (GraphVLA's offline tiny
    config) whose tokenizer has starVLA's placeholder as one token, as the real Qwen tokenizer does.
    Returns the folder."""
    from graphvla.blocks.backbones import tiny_hf

    tokenizer = tiny_hf.make_tokenizer(tiny_hf.QWEN_SPECIALS)
    tokenizer.add_tokens([ACTION_TOKEN])
    torch.manual_seed(SEED)
    model, processor = {"qwen3_vl": tiny_hf._qwen3_vl, "qwen2_5_vl": tiny_hf._qwen2_5_vl}[family](tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_case(model, examples, images) -> dict:
    """starVLA's training loss (forward) and predict_action's actions on the examples, plus what its
    forward fed the VLM (token ids, attention mask) and the placeholder hidden states it gathered,
    recorded by wrapping those two methods (they run unchanged)."""
    seen = {}
    interface = model.qwen_vl_interface
    build, gather = interface.build_qwenvl_inputs, model._gather_action_token_embeddings

    def recording_build(*a, **k):
        seen.setdefault("inputs", build(*a, **k))
        return seen["inputs"]

    def recording_gather(*a, **k):
        seen.setdefault("queries", gather(*a, **k))
        return seen["queries"]

    interface.build_qwenvl_inputs, model._gather_action_token_embeddings = recording_build, recording_gather
    try:
        loss = model(examples)["action_loss"].detach()
    finally:
        del interface.build_qwenvl_inputs, model._gather_action_token_embeddings  # back to the class's methods
    predicted = model.predict_action(examples=[{"image": list(images[i]), **{k: e[k] for k in ("lang", "state") if k in e}}
                                               for i, e in enumerate(examples)])["normalized_actions"]
    inputs = seen["inputs"]
    return {"loss": loss.float().reshape(()), "predicted_actions": torch.from_numpy(np.asarray(predicted, dtype=np.float32)),
            "action_queries": seen["queries"].detach().float().contiguous(),
            "input_ids": inputs["input_ids"].long().contiguous(), "attention_mask": inputs["attention_mask"].long().contiguous()}


def build_qwenoft(vlm_dir: Path):
    """starVLA's QwenOFT on the tiny VLM in `vlm_dir` (starVLA picks its VLM interface from the
    folder's name), built after seeding with SEED."""
    from omegaconf import OmegaConf
    from starVLA.model.framework.VLM4A.QwenOFT import Qwenvl_OFT

    cfg = OmegaConf.create({
        "framework": {
            "name": "QwenOFT",
            "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
            "action_model": {"action_model_type": "MLP", "action_dim": ACTION_DIM, "action_horizon": HORIZON},
        },
        "datasets": {"vla_data": {}},
    })
    torch.manual_seed(SEED)
    return Qwenvl_OFT(cfg)


def bf16_values(model):
    """Every parameter of `model` rounded to the nearest bfloat16 number, kept in float32 (in place;
    returns the model). The fixtures' weights are then what a bfloat16 checkpoint holds: the
    computation stays float32, and bench/starvla_weights.py stores each weight in two bytes instead
    of four without changing a value. Buffers (fixed tables) are left as they are."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    return model


def save_state(out: Path, model_or_state, metadata: dict, name: str = "state") -> None:
    """starVLA's state_dict (float32) as the fixture's state.json, its tensors in the shared,
    content-addressed tests/fixtures/starvla/weights/ (bench/starvla_weights.py); parts no fixture
    names any more are removed."""
    from starvla_weights import prune, save_state as save

    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    save(out, {k: v.detach().float().contiguous().clone() for k, v in state.items()}, metadata, name)
    prune(out.parent)


def save_model_and_case(out: Path, model, vlm_dir: Path, commit: str, images, actions, plain: dict) -> None:
    """The fixture's model half (the VLM's processor and fp32 config in vlm/, every weight of
    starVLA's state_dict) and its plain case (inputs, loss, actions) under `out`."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    vlm_out = out / "vlm"
    vlm_out.mkdir(exist_ok=True)
    model.qwen_vl_interface.processor.save_pretrained(vlm_out)
    cfg_json = json.loads((vlm_dir / "config.json").read_text())
    cfg_json["dtype"] = "float32"
    (vlm_out / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    save_state(out, model, {"starvla_commit": commit})
    save_file({"images": torch.from_numpy(images).contiguous(), "actions": torch.from_numpy(actions), **plain},
              str(out / "case.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True, help="a checkout of github.com/starVLA/starVLA")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"))
    ap.add_argument("--work", default="/tmp/starvla-parity", help="scratch folder for the tiny checkpoint")
    ap.add_argument("--vlm", choices=("qwen3", "qwen25"), default="qwen3",
                    help="qwen3: tiny Qwen3-VL -> qwenoft/ (three cases); qwen25: tiny Qwen2.5-VL, starVLA's "
                         "Qwen2.5-VL interface -> qwenoft_qwen25/ (the plain-instruction case)")
    args = ap.parse_args()
    if args.vlm == "qwen25":
        return main_qwen25(args)
    commit, _ = open_starvla(args.starvla, "QWen3")
    from PIL import Image
    from safetensors.torch import save_file

    # starVLA picks the Qwen3-VL interface from the folder name
    vlm_dir = tiny_qwen3_vl(Path(args.work) / "tiny-Qwen3-VL")
    model = build_qwenoft(vlm_dir)
    # starVLA loads the VLM in bfloat16 (for its CUDA autocast); the fixture is float32 on the CPU,
    # so the whole framework is cast to float32 here (the bf16-rounded VLM weights are what is saved).
    model = bf16_values(model.float().eval())  # the head's weights too are bfloat16 numbers (bf16_values)

    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(len(INSTRUCTIONS), VIEWS, SIZE, SIZE, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, size=(len(INSTRUCTIONS), HORIZON, ACTION_DIM)).astype(np.float32)
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": INSTRUCTIONS[i], "action": actions[i]}
                for i in range(len(INSTRUCTIONS))]

    plain = run_case(model, examples, images)
    model.config.datasets.vla_data.CoT_prompt = COT_PROMPT  # read by build_qwenvl_inputs on every call
    cot = run_case(model, examples, images)
    del model.config.datasets.vla_data.CoT_prompt
    # third case: a proprioceptive state in the examples (starVLA writes it into the prompt as bins)
    states = rng.uniform(-0.95, 0.95, size=(len(INSTRUCTIONS), 1, STATE_DIM)).astype(np.float32)
    with_state = run_case(model, [{**e, "state": states[i]} for i, e in enumerate(examples)], images)
    with_state["state"] = torch.from_numpy(states[:, 0])
    loss = plain["loss"]

    out = Path(args.out) / "qwenoft"
    save_model_and_case(out, model, vlm_dir, commit, images, actions, plain)
    save_file(cot, str(out / "case_cot.safetensors"))
    save_file(with_state, str(out / "case_state.safetensors"))
    (out / "case.json").write_text(json.dumps({
        "framework": "QwenOFT", "starvla_repo": "github.com/starVLA/starVLA", "starvla_commit": commit,
        "vlm": "tiny Qwen3-VL (graphvla.blocks.backbones.tiny_hf config, tokenizer + placeholder token)",
        "seed": SEED, "horizon": HORIZON, "action_dim": ACTION_DIM, "views": VIEWS, "image_size": SIZE,
        "instructions": INSTRUCTIONS, "action_token": ACTION_TOKEN, "cot_prompt": COT_PROMPT, "dtype": "float32", "device": "cpu",
        "loss": float(loss), "loss_cot": float(cot["loss"]), "loss_state": float(with_state["loss"]), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}: loss {float(loss):.6f} (with CoT_prompt {float(cot['loss']):.6f})")


def main_qwen25(args):
    """QwenOFT on a tiny Qwen2.5-VL: starVLA chooses its Qwen2.5-VL interface (QWen2_5.py) when the
    base_vlm path contains "Qwen2.5-VL". That interface passes the images through qwen_vl_utils'
    process_vision_info, which resizes each image to multiples of 28 pixels: the images are 56 x 56
    (a multiple of 28, at its minimum of 4 merged tokens) so nothing is resampled."""
    commit, qwen25_interface = open_starvla(args.starvla, "QWen2_5")
    from PIL import Image

    size = 56
    vlm_dir = tiny_qwen3_vl(Path(args.work) / "tiny-Qwen2.5-VL", "qwen2_5_vl")  # the name picks the interface
    model = build_qwenoft(vlm_dir)
    assert type(model.qwen_vl_interface) is qwen25_interface._QWen_VL_Interface, type(model.qwen_vl_interface)
    model = bf16_values(model.float().eval())

    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(len(INSTRUCTIONS), VIEWS, size, size, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, size=(len(INSTRUCTIONS), HORIZON, ACTION_DIM)).astype(np.float32)
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": INSTRUCTIONS[i], "action": actions[i]}
                for i in range(len(INSTRUCTIONS))]
    plain = run_case(model, examples, images)

    out = Path(args.out) / "qwenoft_qwen25"
    save_model_and_case(out, model, vlm_dir, commit, images, actions, plain)
    (out / "case.json").write_text(json.dumps({
        "framework": "QwenOFT", "starvla_repo": "github.com/starVLA/starVLA", "starvla_commit": commit,
        "vlm": "tiny Qwen2.5-VL (graphvla.blocks.backbones.tiny_hf config, tokenizer + placeholder token)",
        "vlm_interface": "starVLA.model.modules.vlm.QWen2_5._QWen_VL_Interface",
        "seed": SEED, "horizon": HORIZON, "action_dim": ACTION_DIM, "views": VIEWS, "image_size": size,
        "instructions": INSTRUCTIONS, "action_token": ACTION_TOKEN, "dtype": "float32", "device": "cpu",
        "loss": float(plain["loss"]), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}: loss {float(plain['loss']):.6f}")


if __name__ == "__main__":
    main()
