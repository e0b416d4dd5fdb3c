"""Parity fixtures from LeRobot's own pi0.5 (run OUTSIDE the package, in a side virtual environment).

LeRobot 0.4.1's pi05 (lerobot/policies/pi05, the port of openpi's PyTorch pi0.5) needs the same
openpi-patched transformers as its pi0 (its action expert's RMSNorms are openpi's adaptive ones:
`use_adarms` / `adarms_cond_dim` in the Gemma config, a `dense` layer making scale, shift and gate):
/tmp/pi0-transformers, made as scripts/parity/lerobot_pi0.py says. Run:

    PYTHONPATH=/tmp/pi0-transformers /tmp/lerobot-venvs/lerobot-0.4.1/bin/python scripts/parity/lerobot_pi05.py

The tiny sizes are lerobot_pi0.py's (its `tiny_configs` and `redraw` are reused: a Gemma of width 32,
2 layers, an expert of width 16, a SigLIP of width 72, vocabulary 64, every parameter redrawn from a
normal seeded by the crc32 of its name, so the adaptive norms' dense layers, which openpi initializes
to zero, are not zero). max_state_dim / max_action_dim 6 (a 4-d state, 3-d actions), chunks of 5,
10 Euler steps, 12 x 20 cameras resized with padding to 16 x 16, tokenizer_max_length 48.

Records, with LeRobot's own code on a fixed batch of 2: PI05Policy.forward's loss, PI05Pytorch.forward's
per-element losses (noise and time captured from LeRobot's own sample_noise / sample_time draws),
embed_prefix, and predict_action_chunk with the noise its sample_noise drew (captured). The language
tokens of that case are inputs (pi0.5 has no state projection: the state reaches the model only as text
in the prompt, which the import case covers). Writes tests/fixtures/lerobot/pi05/:

  config.json, model.safetensors   what LeRobot's save_pretrained wrote (verbatim)
  case.safetensors, case.json      inputs and LeRobot's outputs; sizes, versions
  tokenizer/                       the stand-in tokenizer's files
  import_04/                       the same policy saved with dataset statistics (QUANTILES state and
                                   actions, pi0.5's default) through make_pi05_pre_post_processors +
                                   save_pretrained (its model.safetensors is the one above, byte for
                                   byte), and case.safetensors / case.json: preprocessor ->
                                   predict_action_chunk -> postprocessor on two raw observations with
                                   tasks (the prompts its Pi05PrepareStateTokenizerProcessorStep wrote,
                                   the tokens its tokenizer step made, the noise its sample_noise drew)

The tokenizer step names google/paligemma-3b-pt-224; nothing is downloaded: a word-level tokenizer in
transformers' format stands in for it (words, the prompt's punctuation and every digit its own token, so
the discretized state changes the tokens) while the step runs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lerobot_pi0 as P0  # noqa: E402  (the torchvision / kernels workarounds run on import)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

SEED = 0
BATCH = 2
CAMERAS = P0.CAMERAS
IMAGE, RES = P0.IMAGE, P0.RES
STATE_DIM, ACTION_DIM, CHUNK, MAX_DIM = 4, 3, 5, 6
LANG = 48
WORDS = P0.WORDS + ("task", "state", "action", ",", ":", ";", "-", *"0123456789")


def make_tokenizer(folder: Path):
    """<pad> 0, <eos> 1, <bos> 2 (prepended), <unk> 3, then WORDS (lower-cased input); split on whitespace,
    punctuation and single digits. Saved to `folder` (tokenizer.json and its config)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: 4 + i for i, w in enumerate(WORDS)}}
    assert len(vocab) < P0.VOCAB - 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                pre_tokenizers.Digits(individual_digits=True)])
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return fast


def import_case(policy, out: Path) -> None:
    from lerobot.policies.pi05 import processor_pi05
    from lerobot.processor import tokenizer_processor

    tok_dir = out / "tokenizer"
    make_tokenizer(tok_dir)
    from transformers import AutoTokenizer

    tokenizer_processor.AutoTokenizer = SimpleNamespace(from_pretrained=lambda name, **k: AutoTokenizer.from_pretrained(
        str(tok_dir)))  # google/paligemma-3b-pt-224 is named in the saved step; these files stand in for it
    g = torch.Generator().manual_seed(2)
    stats = {}
    for key, dim in (("observation.state", STATE_DIM), ("action", ACTION_DIM)):
        mean, std = torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5
        stats[key] = {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
                      "q01": mean - 2 * std, "q99": mean + 2 * std}
    pre, post = processor_pi05.make_pi05_pre_post_processors(policy.config, dataset_stats=stats)
    tasks = ["Pick up the red cube", "open_the drawer\n"]  # cleaned by LeRobot's step: strip, '_' -> ' '
    st = stats["observation.state"]
    states = [st["mean"] + st["std"] * torch.tensor([-2.5, 0.3, 1.1, 2.4]),  # below q01 (bin -1), above q99; off bin edges
              torch.randn(STATE_DIM, generator=g)]
    obs = [{**{k: torch.rand(IMAGE, generator=g) for k in CAMERAS}, "observation.state": s, "task": t}
           for s, t in zip(states, tasks)]
    model = policy.model
    sample_noise = model.sample_noise
    noises = []

    def noise_rec(shape, device):
        noises.append(sample_noise(shape, device))
        return noises[-1]

    model.sample_noise = noise_rec
    prompts = []
    step = next(s for s in pre.steps if type(s).__name__ == "Pi05PrepareStateTokenizerProcessorStep")
    cls = type(step)
    call = cls.__call__

    def prompt_rec(self, transition):
        from lerobot.processor.core import TransitionKey

        result = call(self, transition)
        prompts.append(list(result[TransitionKey.COMPLEMENTARY_DATA]["task"]))
        return result

    cls.__call__ = prompt_rec
    rec = {}
    for i, o in enumerate(obs):
        batch = pre(dict(o))
        torch.manual_seed(0)  # a fresh GraphVLA session (serve.seed 0) draws the same noise
        chunk = post(policy.predict_action_chunk(batch))
        rec.update({f"image{i}_{c}": o[k] for c, k in enumerate(CAMERAS)})
        rec.update({f"state{i}": o["observation.state"], f"tokens{i}": batch["observation.language.tokens"],
                    f"tokens_mask{i}": batch["observation.language.attention_mask"], f"noise{i}": noises[-1],
                    f"chunk{i}": chunk})
    model.sample_noise = sample_noise
    cls.__call__ = call
    from transformers import AutoTokenizer as _AT

    print("tokens", [_AT.from_pretrained(str(tok_dir)).convert_ids_to_tokens(rec[f"tokens{i}"][0].tolist())
                     for i in range(len(obs))])
    dst = out / "import_04"
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(Path(tmp))
        pre.save_pretrained(Path(tmp))
        post.save_pretrained(Path(tmp))
        same = (Path(tmp) / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
        assert same, "the import save's weights differ from the parity fixture's"
        for f in sorted(Path(tmp).iterdir()):
            if f.name != "model.safetensors":
                shutil.copy(f, dst / f.name)
    # LeRobot's empty_cameras: a camera in input_features the batch lacks becomes an image of -1 whose
    # tokens are masked out; observation 0 again with one such camera, the same seed
    from lerobot.configs.types import FeatureType, PolicyFeature

    policy.config.input_features["observation.images.empty_camera_0"] = PolicyFeature(FeatureType.VISUAL, (3, *RES))
    torch.manual_seed(0)
    rec["chunk0_empty_camera"] = post(policy.predict_action_chunk(pre(dict(obs[0]))))
    del policy.config.input_features["observation.images.empty_camera_0"]
    save_file({k: v.contiguous() for k, v in rec.items()}, str(dst / "case.safetensors"))
    (dst / "case.json").write_text(json.dumps({"tasks": tasks, "prompts": [p[0] for p in prompts], "noise_seed": 0,
                                               "model": "../model.safetensors (identical bytes)"}, indent=1) + "\n")
    print("prompts", prompts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parents[1] / "tests" / "fixtures" / "lerobot" / "pi05"))
    args = ap.parse_args()

    import lerobot
    import transformers
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.pi05 import modeling_pi05 as mp
    from lerobot.policies.pi05.configuration_pi05 import PI05Config

    P0.tiny_configs(mp)
    torch.manual_seed(SEED)
    features_in = {k: PolicyFeature(FeatureType.VISUAL, IMAGE) for k in CAMERAS}
    features_in["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    config = PI05Config(input_features=features_in,
                        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
                        chunk_size=CHUNK, n_action_steps=CHUNK, max_state_dim=MAX_DIM, max_action_dim=MAX_DIM,
                        image_resolution=RES, tokenizer_max_length=LANG, dtype="float32", device="cpu")
    policy = mp.PI05Policy(config)
    P0.redraw(policy)
    policy.eval()
    expert = policy.model.paligemma_with_expert.gemma_expert.model
    assert expert.norm.dense is not None and expert.layers[0].input_layernorm.dense is not None  # adaRMS

    g = torch.Generator().manual_seed(1)
    batch = {k: torch.rand((BATCH, *IMAGE), generator=g) for k in CAMERAS}
    batch["observation.state"] = torch.randn(BATCH, STATE_DIM, generator=g)
    batch["action"] = torch.randn(BATCH, CHUNK, ACTION_DIM, generator=g)
    tokens = torch.randint(1, P0.VOCAB - 1, (BATCH, LANG), generator=g)
    mask = torch.zeros(BATCH, LANG, dtype=torch.bool)
    mask[0, :30], mask[1, :21] = True, True
    tokens = tokens * mask  # pad id 0 on the right
    batch["observation.language.tokens"] = tokens
    batch["observation.language.attention_mask"] = mask

    drawn = {}
    model = policy.model
    sample_noise, sample_time = model.sample_noise, model.sample_time

    def noise_rec(shape, device):
        drawn.setdefault("noise", []).append(sample_noise(shape, device))
        return drawn["noise"][-1]

    def time_rec(bsize, device):
        drawn.setdefault("time", []).append(sample_time(bsize, device))
        return drawn["time"][-1]

    model.sample_noise, model.sample_time = noise_rec, time_rec

    torch.manual_seed(SEED)
    with torch.no_grad():
        loss, _ = policy.forward(dict(batch))
        train_noise, train_time = drawn["noise"][0], drawn["time"][0]
        images, img_masks = policy._preprocess_images(batch)
        losses = model.forward(images, img_masks, tokens, mask, policy.prepare_action(batch), train_noise, train_time)
        prefix, prefix_pad, _ = model.embed_prefix(images, img_masks, tokens, mask)
    torch.manual_seed(SEED + 1)
    chunk = policy.predict_action_chunk(dict(batch))
    infer_noise = drawn["noise"][1]
    model.sample_noise, model.sample_time = sample_noise, sample_time
    print("loss", float(loss), "chunk", tuple(chunk.shape))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(Path(tmp))
        for name in ("config.json", "model.safetensors"):
            shutil.copy(Path(tmp) / name, out / name)
    case = {
        **{f"image{i}": batch[k].contiguous() for i, k in enumerate(CAMERAS)},
        "state": batch["observation.state"], "actions": batch["action"],
        "tokens": tokens, "tokens_mask": mask,
        "train_noise": train_noise, "train_time": train_time,
        "loss": loss.detach().reshape(1), "losses": losses,
        "prefix": prefix, "prefix_mask": prefix_pad,
        "infer_noise": infer_noise, "chunk": chunk,
    }
    save_file({k: v.contiguous() for k, v in case.items()}, str(out / "case.safetensors"))
    info = {
        "lerobot": getattr(lerobot, "__version__", "0.4.1"),
        "transformers": transformers.__version__ + " + openpi transformers_replace",
        "torch": torch.__version__, "seed": SEED, "batch": BATCH, "cameras": list(CAMERAS),
        "image": list(IMAGE), "image_resolution": list(RES), "state_dim": STATE_DIM, "action_dim": ACTION_DIM,
        "chunk": CHUNK, "max_dim": MAX_DIM, "vocab": P0.VOCAB, "vlm": P0.VLM, "expert": P0.EXPERT,
        "vision": P0.VISION, "tokenizer_max_length": LANG, "num_steps": config.num_inference_steps,
        "made_by": "scripts/parity/lerobot_pi05.py: PI05Policy.forward (noise/time captured from its own draws), "
                   "PI05Pytorch.forward, embed_prefix, predict_action_chunk (noise captured)",
    }
    (out / "case.json").write_text(json.dumps(info, indent=1) + "\n")
    import_case(policy, out)
    print("wrote", out)


if __name__ == "__main__":
    main()
