"""Parity fixtures for starVLA's QwenFast from starVLA's own code (run OUTSIDE the package, in a
side virtual environment; see scripts/parity/README.md).

QwenFast (starVLA/model/framework/VLM4A/QwenFast.py at 0ed0aad) lets the VLM itself write FAST
action tokens: each normalized chunk becomes FAST ids (physical-intelligence/fast's processor),
id i becomes the special token <robot_action_i> of an "-Action" checkpoint, the answer is the
assistant turn of the chat, the loss is the LM's cross entropy from the first action token on,
and predict_action decodes greedily (transformers' generate) and detokenizes the action tokens.

Nothing is downloaded. What starVLA would fetch is made here, with the reference's own code:
  * the FAST tokenizer: physical-intelligence/fast's processing_action_tokenizer.py (its remote
    code, passed with --fast-code; outside the repository) fits a tiny BPE on seeded chunks
    (UniversalActionProcessor.fit) and the folder is saved in the Hub's layout; starVLA's
    Fast_Action_Tokenizer loads it through AutoProcessor.from_pretrained (only the path changes);
  * the "-Action" VLM: the tiny Qwen-VL of scripts/parity/starvla.py with one special token per
    FAST id added by starVLA's own tool (vlm/tools/add_qwen_special_tokens: add_new_tokens,
    init "normal").
starVLA hard-codes where the action tokens start (_ACTION_TOKEN_MIN/_MAX in QWen3.py / QWen2_5.py:
151669.. on the real Qwen3-VL tokenizer); on the tiny tokenizer they start elsewhere, so those two
module constants are set to the tiny tokenizer's <robot_action_0> .. <robot_action_{N-1}> ids
before the framework is built. Nothing else of starVLA is changed.

An untrained VLM generates no action tokens, so the framework is first trained a little (Adam,
starVLA's own forward loss) on the prediction case's targets; the saved weights are those. Then:
  case.safetensors   the training loss on other (unseen) action chunks, with the token ids, mask
                     and labels starVLA built; predict_action's actions on the fitted images and
                     instructions, with the generated ids and the action tokens it extracted
  state.json         every weight of the framework's state_dict, bfloat16 numbers in float32
                     (float32, keys as starVLA names them; its tensors in the shared weights/ store, bench/starvla_weights.py)
  vlm/               the tiny VLM's processor (tokenizer with the action tokens), config and
                     generation config;  fast/  the fitted FAST tokenizer (no code)

Usage:
  /tmp/starvla-venv/bin/python scripts/parity/starvla_fast.py --starvla /tmp/starvla \\
      --fast-code DIR_WITH_processing_action_tokenizer.py [--vlm qwen3|qwen25]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starvla import INSTRUCTIONS, SEED, bf16_values, open_starvla, save_state, tiny_qwen3_vl  # noqa: E402

HORIZON = 4
ACTION_DIM = 7
VIEWS = 2
FAST_VOCAB = 160  # the tiny BPE's vocabulary (physical-intelligence/fast: 2048)
FAST_SCALE = 10
FIT_STEPS = 60
FIT_LR = 3e-3
VLMS = {  # --vlm: (starVLA's interface module, tiny family, folder name starVLA picks the interface by, image side, fixture)
    "qwen3": ("QWen3", "qwen3_vl", "tiny-Qwen3-VL-Action", 64, "qwenfast"),
    "qwen25": ("QWen2_5", "qwen2_5_vl", "tiny-Qwen2.5-VL-Action", 56, "qwenfast_qwen25"),
}


def smooth_chunks(rng, n: int) -> np.ndarray:
    """n chunks [H, A] in [-1, 1]: a start and a constant velocity per dimension (FAST's DCT has
    its energy in few coefficients on such chunks, as on real trajectories)."""
    start = rng.uniform(-0.8, 0.8, size=(n, 1, ACTION_DIM))
    velocity = rng.normal(0, 0.15, size=(n, 1, ACTION_DIM))
    return np.clip(start + velocity * np.arange(HORIZON)[None, :, None], -1, 1).astype(np.float32)


def fit_fast(code_dir: Path, folder: Path, rng) -> Path:
    """The reference FAST processor fitted on seeded chunks, saved as physical-intelligence/fast
    is laid out on the Hub (processor_config.json with its auto_map, tokenizer files, the code)."""
    spec = importlib.util.spec_from_file_location("processing_action_tokenizer", code_dir / "processing_action_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = smooth_chunks(rng, 400)
    processor = module.UniversalActionProcessor.fit(list(data.astype(np.float64)), scale=FAST_SCALE, vocab_size=FAST_VOCAB)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    processor.bpe_tokenizer.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
        "processor_class": "UniversalActionProcessor", "scale": FAST_SCALE, "vocab_size": FAST_VOCAB,
        "min_token": int(processor.min_token), "time_horizon": None, "action_dim": None}, indent=2) + "\n")
    shutil.copy(code_dir / "processing_action_tokenizer.py", folder)
    return folder


def action_vlm(starvla: Path, base_dir: Path, out_dir: Path) -> tuple[int, int]:
    """starVLA's add_new_tokens (its add_qwen_special_tokens tool) on the tiny VLM: <robot_action_i>
    for every FAST id, as special tokens, new embedding rows drawn normal(0, 0.02). Saved to
    out_dir; returns the ids of the first and last action token."""
    from graphvla.processors.hf_processor import load_processor
    from transformers import AutoModelForImageTextToText

    spec = importlib.util.spec_from_file_location(
        "add_special_tokens_to_qwen", starvla / "starVLA/model/modules/vlm/tools/add_qwen_special_tokens/add_special_tokens_to_qwen.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32)
    processor = load_processor(base_dir)
    tokens = [f"<robot_action_{i}>" for i in range(FAST_VOCAB)]
    torch.manual_seed(SEED)
    mapping, _, _, _ = tool.add_new_tokens(model, processor.tokenizer, tokens, init_strategy="normal", as_special=True)
    ids = [mapping[t] for t in tokens]
    assert ids == list(range(ids[0], ids[0] + FAST_VOCAB)), "the action tokens are not consecutive ids"
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return ids[0], ids[-1]


def build_qwenfast(vlm_dir: Path, fast_dir: Path, interface, token_range):
    """starVLA's QwenFast on the tiny -Action VLM, its FAST tokenizer read from fast_dir, the
    interface's action-token range set to the tiny tokenizer's; built after seeding with SEED."""
    from omegaconf import OmegaConf
    from transformers import AutoProcessor

    import starVLA.model.modules.action_model.fast_ActionHeader as header
    from starVLA.model.framework.VLM4A.QwenFast import Qwenvl_Fast

    interface._ACTION_TOKEN_MIN, interface._ACTION_TOKEN_MAX = token_range
    header.AutoProcessor = types.SimpleNamespace(
        from_pretrained=lambda name, **kw: AutoProcessor.from_pretrained(str(fast_dir), **kw))
    cfg = OmegaConf.create({
        "framework": {
            "name": "QwenFast",
            "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
            "action_model": {"action_model_type": "FAST", "action_dim": ACTION_DIM, "action_horizon": HORIZON},
        },
        "datasets": {"vla_data": {}},
    })
    torch.manual_seed(SEED)
    model = Qwenvl_Fast(cfg)
    assert model.qwen_vl_interface._ACTION_TOKEN_MIN == token_range[0]
    return model


def record(model, examples, images):
    """starVLA's training loss on `examples`, with what build_qwenvl_inputs made for it (wrapped,
    unchanged), and predict_action's actions on their images and instructions, with the ids its
    VLM generated (the HF model's generate wrapped, unchanged)."""
    seen = {}
    interface = model.qwen_vl_interface
    build, generate = interface.build_qwenvl_inputs, interface.model.generate

    def recording_build(*a, **k):
        out = build(*a, **k)
        seen.setdefault("train" if k.get("solutions") is not None else "predict", out)
        return out

    def recording_generate(*a, **k):
        seen["generated"] = generate(*a, **k)
        return seen["generated"]

    interface.build_qwenvl_inputs, interface.model.generate = recording_build, recording_generate
    try:
        loss = model(examples)["action_loss"].detach()
        predicted = model.predict_action(examples=[{"image": list(images[i]), "lang": e["lang"]}
                                                   for i, e in enumerate(examples)])["normalized_actions"]
    finally:
        del interface.build_qwenvl_inputs, interface.model.generate
    train, prompt, generated = seen["train"], seen["predict"], seen["generated"]
    tokens = model._extract_action_token_ids(generated)
    width = max(1, max(len(t) for t in tokens))
    action_ids = torch.full((len(tokens), width), -1, dtype=torch.long)
    for i, t in enumerate(tokens):
        action_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long) - interface._ACTION_TOKEN_MIN
    return {
        "loss": loss.float().reshape(()), "predicted_actions": torch.from_numpy(np.asarray(predicted, dtype=np.float32)),
        "input_ids": train["input_ids"].long().contiguous(), "attention_mask": train["attention_mask"].long().contiguous(),
        "labels": train["labels"].long().contiguous(), "prompt_ids": prompt["input_ids"].long().contiguous(),
        "prompt_mask": prompt["attention_mask"].long().contiguous(), "generated_ids": generated.long().contiguous(),
        "fast_ids": action_ids,
    }


def fit_to(model, examples, steps: int, lr: float) -> list[float]:
    """A few Adam steps on starVLA's own training loss, so that greedy decoding writes actions. Only
    the token embedding matrix (tied to the LM head), the language model's last layer and its final
    norm are trained: the vision tower and the other layers stay the tiny VLM's that the other
    fixtures hold, so the weights store (bench/starvla_weights.py) keeps them once."""
    vlm = model.qwen_vl_interface.model
    assert vlm.get_input_embeddings().weight is vlm.get_output_embeddings().weight, "the tiny VLM's embeddings are not tied"
    last = f"language_model.layers.{vlm.config.text_config.num_hidden_layers - 1}."
    params = [p for n, p in vlm.named_parameters()
              if last in n or n.endswith(("language_model.embed_tokens.weight", "language_model.norm.weight"))]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    model.train()
    torch.manual_seed(SEED)
    for _ in range(steps):
        loss = model(examples)["action_loss"]
        model.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    model.eval()
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True, help="a checkout of github.com/starVLA/starVLA")
    ap.add_argument("--fast-code", required=True,
                    help="folder with physical-intelligence/fast's processing_action_tokenizer.py (reference code)")
    ap.add_argument("--vlm", choices=tuple(VLMS), default="qwen3")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"))
    ap.add_argument("--work", default="/tmp/starvla-parity-fast", help="scratch folder")
    args = ap.parse_args()
    module_name, family, folder_name, size, fixture = VLMS[args.vlm]
    commit, interface = open_starvla(args.starvla, module_name)
    from PIL import Image
    from safetensors.torch import save_file

    work = Path(args.work)
    rng = np.random.default_rng(SEED)
    fast_dir = fit_fast(Path(args.fast_code), work / "fast", rng)
    base_dir = tiny_qwen3_vl(work / f"base-{folder_name}", family)
    vlm_dir = work / folder_name  # "-Action": the interface then reads the action-token range
    token_range = action_vlm(Path(args.starvla), base_dir, vlm_dir)
    model = build_qwenfast(vlm_dir, fast_dir, interface, token_range).float()

    images = rng.integers(0, 256, size=(len(INSTRUCTIONS), VIEWS, size, size, 3), dtype=np.uint8)
    fitted = smooth_chunks(rng, len(INSTRUCTIONS))  # the chunks the model learns to write for these inputs
    unseen = smooth_chunks(rng, len(INSTRUCTIONS))  # the training-loss case: other chunks, a loss far from 0

    def examples(actions):
        return [{"image": [Image.fromarray(v) for v in images[i]], "lang": INSTRUCTIONS[i], "action": actions[i]}
                for i in range(len(INSTRUCTIONS))]

    losses = fit_to(model, examples(fitted), FIT_STEPS, FIT_LR)
    bf16_values(model)  # the fitted weights rounded to bfloat16 numbers (starvla.bf16_values), then recorded
    case = record(model, examples(unseen), images)
    decoded_ok = [bool(np.abs(case["predicted_actions"][i].numpy()).sum() > 0) for i in range(len(INSTRUCTIONS))]

    out = Path(args.out) / fixture
    shutil.rmtree(out, ignore_errors=True)
    (out / "vlm").mkdir(parents=True)
    model.qwen_vl_interface.processor.save_pretrained(out / "vlm")
    cfg_json = json.loads((vlm_dir / "config.json").read_text())
    cfg_json["dtype"] = "float32"
    (out / "vlm" / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    shutil.copy(vlm_dir / "generation_config.json", out / "vlm" / "generation_config.json")
    (out / "fast").mkdir()
    for name in ("tokenizer.json", "processor_config.json"):
        shutil.copy(fast_dir / name, out / "fast" / name)
    save_state(out, model, {"starvla_commit": commit})
    save_file({"images": torch.from_numpy(images).contiguous(), "actions": torch.from_numpy(unseen),
               "fitted_actions": torch.from_numpy(fitted), **case}, str(out / "case.safetensors"))
    (out / "case.json").write_text(json.dumps({
        "framework": "QwenFast", "starvla_repo": "github.com/starVLA/starVLA", "starvla_commit": commit,
        "vlm": f"tiny {family} (graphvla.blocks.backbones.tiny_hf config) with starVLA's add_new_tokens: "
               f"<robot_action_0..{FAST_VOCAB - 1}>",
        "vlm_interface": f"starVLA.model.modules.vlm.{module_name}", "action_token_min": token_range[0],
        "action_token_max": token_range[1], "fast": {"scale": FAST_SCALE, "vocab_size": FAST_VOCAB,
                                                     "fitted_on": "400 seeded smooth chunks, UniversalActionProcessor.fit"},
        "seed": SEED, "horizon": HORIZON, "action_dim": ACTION_DIM, "views": VIEWS, "image_size": size,
        "instructions": INSTRUCTIONS, "fit": {"steps": FIT_STEPS, "lr": FIT_LR, "first_loss": losses[0], "last_loss": losses[-1]},
        "dtype": "float32", "device": "cpu", "loss": float(case["loss"]), "decoded": decoded_ok,
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}: fit loss {losses[0]:.3f} -> {losses[-1]:.4f}; case loss {float(case['loss']):.6f}; "
          f"decoded {decoded_ok}; fast ids {case['fast_ids'].tolist()}")


if __name__ == "__main__":
    main()
