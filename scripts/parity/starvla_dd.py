"""Parity fixtures for starVLA's QwenDiscreteDiffusion (run OUTSIDE the package, in a side venv).

Builds starVLA's own Qwen_DiscreteDiffusion framework (QwenDiscreteDiffusion.py and
LayerwiseDiscreteDiffusion_ActionHeader.py at the checkout's commit) on the tiny Qwen3-VL (or
Qwen2.5-VL) of scripts/parity/starvla.py with seed 0, float32 on the CPU, eval mode, and records
on a fixed batch (2 samples, 2 views, equal-length prompts, horizon 4, 7-d actions, 8-d state):

  case                the training loss (forward), with the uniforms its apply_mask drew
  case_predict        (Qwen3-VL only) predict_action (decode/choice temperature 0.1, starVLA's defaults), with
                      the Exp(1) draws behind each torch.multinomial and the ranking uniforms
  case_greedy         predict_action with both temperatures 0 (no randomness)
  case_rtc            (Qwen3-VL only) predict_action_realtime: the first 2 steps pinned to a previous chunk
                      (execution_horizon 2), with its draws
  case_bit            (Qwen3-VL only; a second model, representation "bit") predict_action with its draws; the
                      bit variant's training loss raises inside starVLA at this commit (its
                      BCE compares [B, L, 8] logits with [B, H, A, 8] targets): recorded as such

With --vlm qwen25 the head is the Qwen3-VL fixture's, tensor for tensor (same seed; checked), so
run the script without --vlm first; the weights store (bench/starvla_weights.py) keeps it once.

Randomness is recorded, not replaced: torch.rand is wrapped to keep what it returns, and
torch.multinomial (one draw per row) is computed as torch does it internally (argmax of p / E,
E from exponential_) after checking, on a copy of the generator state, that this equals the real
torch.multinomial; nothing else is touched.

Usage: /tmp/starvla-venv/bin/python scripts/parity/starvla_dd.py --starvla /tmp/starvla [--vlm qwen25]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from starvla import (ACTION_DIM, HORIZON, SEED, STATE_DIM, VIEWS, bf16_values, open_starvla,  # noqa: E402
                     save_model_and_case, save_state, tiny_qwen3_vl)

# equal token counts in the tiny tokenizer (checked below): no padding, so starVLA's DiT (which
# cross-attends to every token, padding included) and GraphVLA's (which masks padding) agree
INSTRUCTIONS = ["pick up the cube", "open the top drawer"]
STEPS = 8
PREDICT_SEED = 1  # torch's seed before each sampled decode (starvla_dd_ckpt.py draws the same again)


class Recorder:
    """Wraps torch.rand and torch.multinomial while active; keeps what they produce."""

    def __init__(self):
        self.rand, self.exp = [], []

    def __enter__(self):
        self._rand, self._multinomial = torch.rand, torch.multinomial

        def rand(*a, **k):
            out = self._rand(*a, **k)
            self.rand.append(out.detach().clone())
            return out

        def multinomial(probs, num_samples, replacement=False, *, generator=None):
            assert num_samples == 1 and generator is None
            state = torch.get_rng_state()
            expected = self._multinomial(probs, 1)
            torch.set_rng_state(state)
            q = torch.empty_like(probs).exponential_(1)
            out = (probs / q).argmax(dim=-1, keepdim=True)
            assert torch.equal(out, expected), "torch.multinomial is no longer argmax(p / Exp(1))"
            self.exp.append(q.detach().clone())
            return out

        torch.rand, torch.multinomial = rand, multinomial
        return self

    def __exit__(self, *exc):
        torch.rand, torch.multinomial = self._rand, self._multinomial


def build(vlm_dir: Path, representation: str = "bin"):
    from omegaconf import OmegaConf
    from starVLA.model.framework.VLM4A.QwenDiscreteDiffusion import Qwen_DiscreteDiffusion

    cfg = OmegaConf.create({
        "framework": {
            "name": "QwenDiscreteDiffusion",
            "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
            "action_model": {"action_model_type": "LayerwiseDD", "action_dim": ACTION_DIM, "state_dim": STATE_DIM,
                             "action_horizon": HORIZON, "representation": representation,
                             # tiny position tables (defaults 1024 and 512): 1 + 32 + 28 tokens fit in 64
                             "max_seq_len": 64, "diffusion_model_cfg": {"max_num_positional_embeddings": 64}},
        },
        "datasets": {"vla_data": {}},
    })
    from starVLA.model.framework.share_tools import apply_config_compat

    cfg = apply_config_compat(cfg)  # as starVLA's trainer does (fills future_action_window_size)
    torch.manual_seed(SEED)
    model = Qwen_DiscreteDiffusion(cfg)
    return bf16_values(model.float().eval())  # weights that are bfloat16 numbers (starvla.bf16_values)


def decode_noise(rec: Recorder, b: int) -> torch.Tensor:
    """The recorded draws as GraphVLA's predict `noise` [B, S, H, A, K + 1]."""
    rounds = []
    for e, u in zip(rec.exp or [None] * len(rec.rand), rec.rand):
        u = u.reshape(b, HORIZON, ACTION_DIM, 1)
        e = e.reshape(b, HORIZON, ACTION_DIM, -1) if e is not None else None
        rounds.append(torch.cat([e, u], dim=-1) if e is not None else u)
    return torch.stack(rounds, dim=1).float().contiguous()


def bit_noise(rec: Recorder, b: int) -> torch.Tensor:
    """bit representation: each round draws rand_like(probs) [B, H, A, 8] (wrapped below) then the
    ranking rand(B, L)."""
    rounds = []
    for bits, u in zip(rec.rand[0::2], rec.rand[1::2]):
        rounds.append(torch.cat([bits.reshape(b, HORIZON, ACTION_DIM, 8), u.reshape(b, HORIZON, ACTION_DIM, 1)], dim=-1))
    return torch.stack(rounds, dim=1).float().contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla", required=True)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "starvla"))
    ap.add_argument("--work", default="/tmp/starvla-parity-dd")
    ap.add_argument("--vlm", choices=("qwen3", "qwen25"), default="qwen3")
    args = ap.parse_args()
    qwen25 = args.vlm == "qwen25"
    # diffusers (starVLA's DiT) probes for torchvision when first imported: import it before the stub
    from diffusers.models import attention, embeddings  # noqa: F401
    commit, _ = open_starvla(args.starvla, "QWen2_5" if qwen25 else "QWen3")
    from PIL import Image
    from safetensors.torch import save_file

    size = 56 if qwen25 else 64
    folder = "tiny-Qwen2.5-VL" if qwen25 else "tiny-Qwen3-VL"
    vlm_dir = tiny_qwen3_vl(Path(args.work) / folder, "qwen2_5_vl" if qwen25 else "qwen3_vl")
    model = build(vlm_dir)

    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(len(INSTRUCTIONS), VIEWS, size, size, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, size=(len(INSTRUCTIONS), HORIZON, ACTION_DIM)).astype(np.float32)
    states = rng.uniform(-0.95, 0.95, size=(len(INSTRUCTIONS), 1, STATE_DIM)).astype(np.float32)
    prev = rng.uniform(-1, 1, size=(len(INSTRUCTIONS), 2, ACTION_DIM)).astype(np.float32)
    b = len(INSTRUCTIONS)
    examples = [{"image": [Image.fromarray(v) for v in images[i]], "lang": INSTRUCTIONS[i], "action": actions[i],
                 "state": states[i]} for i in range(b)]
    infer_examples = [{"image": list(images[i]), "lang": INSTRUCTIONS[i], "state": states[i]} for i in range(b)]

    seen = {}
    build_inputs = model.qwen_vl_interface.build_qwenvl_inputs

    def recording_build(*a, **k):
        seen.setdefault("inputs", build_inputs(*a, **k))
        return seen["inputs"]

    model.qwen_vl_interface.build_qwenvl_inputs = recording_build
    try:
        with Recorder() as rec:
            loss = model(examples)["action_loss"].detach()
    finally:
        del model.qwen_vl_interface.build_qwenvl_inputs
    assert bool(seen["inputs"]["attention_mask"].bool().all()), "the prompts were padded: pick equal-length instructions"
    assert len(rec.rand) == 2 and not rec.exp, [t.shape for t in rec.rand]  # apply_mask: rand(B k), rand(B k, H, A)
    rows = rec.rand[0].shape[0]
    L = HORIZON * ACTION_DIM
    mask_noise = torch.zeros(rows, 1 + 2 * L)
    mask_noise[:, 0] = rec.rand[0]
    mask_noise[:, 1:1 + L] = rec.rand[1].reshape(rows, L)
    case = {"loss": loss.float().reshape(()), "mask_noise": mask_noise,
            "input_ids": seen["inputs"]["input_ids"].long().contiguous()}

    torch.manual_seed(PREDICT_SEED)
    with Recorder() as rec:
        predicted = model.predict_action(examples=infer_examples)["normalized_actions"]
    assert len(rec.exp) == STEPS and len(rec.rand) == STEPS
    predict = {"actions": torch.from_numpy(np.asarray(predicted, dtype=np.float32)), "noise": decode_noise(rec, b)}
    with Recorder() as rec:
        greedy = model.predict_action(examples=infer_examples, decode_temperature=0.0,
                                      choice_temperature=0.0)["normalized_actions"]
    assert not rec.exp and not rec.rand
    torch.manual_seed(PREDICT_SEED)
    with Recorder() as rec:
        realtime = model.predict_action_realtime(examples=infer_examples, prev_action_chunk_normalized=prev,
                                                 inference_delay=1, execution_horizon=2)["normalized_actions"]
    rtc = {"actions": torch.from_numpy(np.asarray(realtime, dtype=np.float32)), "noise": decode_noise(rec, b),
           "previous": torch.from_numpy(prev)}

    out = Path(args.out) / ("qwendd_qwen25" if qwen25 else "qwendd")
    save_model_and_case(out, model, vlm_dir, commit, images, actions, case)
    if qwen25:
        # the head comes out of the same seed as on Qwen3-VL, tensor for tensor (checked against qwendd/,
        # which the run without --vlm writes first), so the weights store holds it once for both
        from starvla_weights import load_state
        assert (Path(args.out) / "qwendd" / "state.json").is_file(), "run starvla_dd.py without --vlm first"
        head3, state = load_state(Path(args.out) / "qwendd"), model.state_dict()
        heads = [k for k in state if k.startswith("action_model.")]
        assert all(k in head3 and torch.equal(state[k].float(), head3[k]) for k in heads), "the Qwen2.5-VL head differs"
    save_file({"actions": torch.from_numpy(np.asarray(greedy, dtype=np.float32))}, str(out / "case_greedy.safetensors"))
    if not qwen25:  # the sampled decodes (their draws are most of a fixture's size) once, on Qwen3-VL
        save_file({k: v.contiguous() for k, v in predict.items()}, str(out / "case_predict.safetensors"))
        save_file({k: v.contiguous() for k, v in rtc.items()}, str(out / "case_rtc.safetensors"))
    save_file({"state": torch.from_numpy(states[:, 0]).contiguous()}, str(out / "case_state.safetensors"))
    meta = {
        "framework": "QwenDiscreteDiffusion", "starvla_repo": "github.com/starVLA/starVLA", "starvla_commit": commit,
        "vlm": f"tiny {'Qwen2.5-VL' if qwen25 else 'Qwen3-VL'} (graphvla.blocks.backbones.tiny_hf config)",
        "seed": SEED, "horizon": HORIZON, "action_dim": ACTION_DIM, "state_dim": STATE_DIM, "views": VIEWS,
        "image_size": size, "instructions": INSTRUCTIONS, "dtype": "float32", "device": "cpu",
        "decode_temperature": 0.1, "choice_temperature": 0.1, "num_inference_steps": STEPS,
        "repeated_diffusion_steps": 2, "rtc": {"inference_delay": 1, "execution_horizon": 2, "pinned_steps": 2,
                                               "rounds": int(rtc["noise"].shape[1])},
        "loss": float(loss), "torch": torch.__version__,
        "action_model_weights": "qwendd's (identical, checked)" if qwen25 else "state.json", "transformers": __import__("transformers").__version__,
    }

    if not qwen25:  # the 8-bit representation: a second head on the same VLM
        bit = build(vlm_dir, "bit")
        try:
            bit(examples)
            meta["bit_loss_error"] = None
        except Exception as e:  # noqa: BLE001 - recorded: starVLA's own bit loss at this commit
            meta["bit_loss_error"] = f"{type(e).__name__}: {e}"
        rand_like = torch.rand_like
        torch.manual_seed(PREDICT_SEED)
        with Recorder() as rec:
            def recording_rand_like(*a, **k):
                t = rand_like(*a, **k)
                rec.rand.append(t.detach().clone())
                return t
            torch.rand_like = recording_rand_like
            try:
                bit_actions = bit.predict_action(examples=infer_examples)["normalized_actions"]
            finally:
                torch.rand_like = rand_like
        assert len(rec.rand) == 2 * STEPS and not rec.exp
        # only the tensors that differ from the bin model's are saved (the VLM and the first DiT
        # weights come out of the same seed identical): state_bit.json; the test takes the rest from state.json
        bin_state, bit_state = model.state_dict(), bit.state_dict()
        assert set(bin_state) <= set(bit_state), set(bin_state) - set(bit_state)
        differ = {k: v.detach().float().contiguous().clone() for k, v in bit_state.items()
                  if k not in bin_state or v.shape != bin_state[k].shape or not torch.equal(v.float(), bin_state[k].float())}
        assert not any(k.startswith("qwen_vl_interface.") for k in differ), "the bit model's VLM differs"
        save_state(out, differ, {"starvla_commit": commit}, name="state_bit")
        meta["bit_keys_saved"] = len(differ)
        save_file({"actions": torch.from_numpy(np.asarray(bit_actions, dtype=np.float32)), "noise": bit_noise(rec, b)},
                  str(out / "case_bit.safetensors"))
    (out / "case.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}: loss {float(loss):.6f}; bit loss: {meta.get('bit_loss_error')}")


if __name__ == "__main__":
    main()
