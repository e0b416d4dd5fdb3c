"""Parity fixtures from LeRobot's own pi0 (run OUTSIDE the package, in a side virtual environment).

LeRobot 0.4.1's pi0 (lerobot/policies/pi0, "a direct port of the OpenPI implementation") runs only on
the transformers that openpi patches (transformers 4.53.2 with openpi's
src/openpi/models_pytorch/transformers_replace copied over it: Gemma's RMSNorm returning (x, gate),
_gated_residual, no sqrt(width) inside GemmaModel, PaliGemma's image features without the
1/sqrt(width) scaling; LeRobot 0.4 installs the same as a transformers fork). Make it beside the
0.4.1 venv (scripts/check_lerobot.sh) without touching that venv:

    /tmp/lerobot-venvs/lerobot-0.4.1/bin/pip install --no-deps --target /tmp/pi0-transformers \
        transformers==4.53.2 "tokenizers>=0.21,<0.22"
    # then copy openpi's transformers_replace/models/{gemma,paligemma,siglip}/*.py (openpi @ main)
    # over /tmp/pi0-transformers/transformers/models/
    PYTHONPATH=/tmp/pi0-transformers /tmp/lerobot-venvs/lerobot-0.4.1/bin/python scripts/parity/lerobot_pi0.py

LeRobot 0.3.2's pi0 is a different port (bfloat16 hard-wired in its activations, loss over the padded
action dims with action_is_pad masking, padding on the top/left when resizing): these fixtures are
0.4.1's (the openpi port, which runs in float32 with config.dtype "float32").

Tiny config of the same families: LeRobot hard-wires the sizes (get_gemma_config's gemma_2b /
gemma_300m, PaliGemma's default SigLIP so400m, vocabulary 257152, projection 2048), so this script
substitutes a tiny Gemma (width 32, 2 layers, MLP 64) for the VLM, a tiny Gemma expert (width 16, MLP
32), a SigLIP of width 72 (one head of 72, so400m's head width; 2 layers, MLP 32, 4 x 4 patches on
16 x 16 images: 16 tokens per camera), vocabulary 64, through get_gemma_config and the configs PaliGemmaWithExpertModel builds.
Attention keeps pi0's 8 query heads and 1 key-value head (LeRobot reshapes with 1 * 8 * head_dim),
head_dim 4. Every parameter is redrawn (normal, seeded by the crc32 of its name, std 0.2; norms
around 0) so numbers are not transformers' init.

max_state_dim / max_action_dim 6 (a 4-d state, 3-d actions padded), chunks of 5, 10 Euler steps,
image_resolution 16 x 16: the two cameras are 12 x 20, so LeRobot's resize_with_pad_torch runs
(16 x 9 after resizing, padded to 16 wide with -1 before the [-1, 1] scaling, as LeRobot does it).
Language tokens (6, right padding; tokenizing is the preprocessor's) are inputs.

Records, with LeRobot's own code on a fixed batch of 2: PI0Policy.forward's loss, PI0Pytorch.forward's
per-element losses (noise and time captured from LeRobot's own sample_noise / sample_time draws),
embed_prefix's embeddings, and predict_action_chunk with the noise its sample_noise drew (captured).
Writes tests/fixtures/lerobot/pi0/:

  config.json            the config.json LeRobot's save_pretrained wrote (verbatim)
  model.safetensors      LeRobot's saved weights (verbatim)
  case.safetensors       inputs and LeRobot's outputs
  case.json              sizes, versions, how the case was made
  tokenizer/             the stand-in tokenizer's files
  import_04/             the same policy saved with dataset statistics through LeRobot 0.4.1's
                         make_pi0_pre_post_processors + save_pretrained (config.json, the processor
                         files; its model.safetensors is the one above, byte for byte), and
                         case.safetensors: preprocessor -> predict_action_chunk -> postprocessor on
                         two raw observations with tasks (tokens as its tokenizer step made them,
                         the noise its sample_noise drew)

The tokenizer step names google/paligemma-3b-pt-224 (as LeRobot's own saves do); nothing is
downloaded: a small word-level tokenizer in transformers' format (`make_tokenizer`, saved as
tokenizer/) stands in for it while the step runs, and the tokens it made are recorded.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # scripts/: check_lerobot's torchvision workaround
from check_lerobot import _torchvision_without_compiled_ops  # noqa: E402

print(_torchvision_without_compiled_ops())

import transformers.utils.import_utils as _iu  # noqa: E402

_iu._kernels_available = False  # the system's `kernels` wants a newer huggingface_hub than this venv's

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

SEED = 0
BATCH = 2
CAMERAS = ("observation.images.top", "observation.images.wrist")
IMAGE = (3, 12, 20)
RES = (16, 16)
STATE_DIM, ACTION_DIM, CHUNK, MAX_DIM = 4, 3, 5, 6
LANG = 6
VOCAB = 64
VLM = dict(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=4)
EXPERT = dict(width=16, depth=2, mlp_dim=32, num_heads=8, num_kv_heads=1, head_dim=4)
VISION = dict(hidden_size=72, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1,
              patch_size=4, image_size=16)


def tiny_configs(mp):
    """Make LeRobot's PaliGemmaWithExpertModel build the tiny sizes above (it hard-wires the real
    ones by assignment after building its configs: the tiny configs hold theirs fixed)."""
    from transformers.models.gemma.configuration_gemma import GemmaConfig
    from transformers.models.paligemma.configuration_paligemma import PaliGemmaConfig
    from transformers.models.siglip.configuration_siglip import SiglipVisionConfig

    def fixed(cls, **values):
        attrs = {k: property(lambda self, v=v: v, lambda self, _x: None) for k, v in values.items()}
        return type("Tiny" + cls.__name__, (cls,), attrs)

    TinyText = fixed(GemmaConfig, vocab_size=VOCAB)
    TinyVision = fixed(SiglipVisionConfig, intermediate_size=VISION["intermediate_size"],
                       projection_dim=VLM["width"])
    TinyPali = fixed(PaliGemmaConfig, _vocab_size=VOCAB, image_token_index=VOCAB - 1)
    from transformers import AutoModel
    from transformers.models.gemma.modeling_gemma import GemmaModel
    from transformers.models.siglip.modeling_siglip import SiglipVisionModel

    AutoModel._model_mapping._extra_content[TinyText] = GemmaModel  # what AutoModel.register stores
    AutoModel._model_mapping._extra_content[TinyVision] = SiglipVisionModel

    def paligemma():
        cfg = TinyPali()
        text = TinyText(**{k: v for k, v in cfg.text_config.to_dict().items() if k != "vocab_size"})
        vision = TinyVision(**{k: v for k, v in cfg.vision_config.to_dict().items()
                               if k not in ("intermediate_size", "projection_dim")})
        for k, v in VISION.items():
            if k != "intermediate_size":
                setattr(vision, k, v)
        cfg.text_config, cfg.vision_config = text, vision
        return cfg

    def gemma(**kw):
        kw.pop("vocab_size", None)
        return TinyText(**kw)

    mapping = {"paligemma": paligemma, "gemma": gemma}
    mp.CONFIG_MAPPING = mapping
    real = mp.get_gemma_config
    mp.get_gemma_config = lambda variant: mp.GemmaConfig(**(VLM if variant == "gemma_2b" else EXPERT))
    return real


WORDS = ("pick", "up", "the", "red", "cube", "open", "it", "drawer", "place", "on", "a", "plate")


def make_tokenizer(folder: Path):
    """A small word-level tokenizer in transformers' format standing in for PaliGemma's (a Hub download):
    <pad> 0, <eos> 1, <bos> 2 (prepended, as PaliGemma's), <unk> 3, then WORDS; split on whitespace (the
    trailing newline pi0 appends is dropped, as a word split). Saved to `folder` (tokenizer.json and
    its config), which GraphVLA's test loads too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: 4 + i for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return fast


def import_case(policy, out: Path) -> None:
    from lerobot.policies.pi0 import processor_pi0
    from lerobot.processor import tokenizer_processor

    tok_dir = out / "tokenizer"
    make_tokenizer(tok_dir)
    from transformers import AutoTokenizer

    tokenizer_processor.AutoTokenizer = SimpleNamespace(from_pretrained=lambda name, **k: AutoTokenizer.from_pretrained(
        str(tok_dir)))  # google/paligemma-3b-pt-224 is named in the saved step; these files stand in for it
    g = torch.Generator().manual_seed(2)
    stats = {key: {"mean": torch.randn(dim, generator=g), "std": torch.rand(dim, generator=g) + 0.5}
             for key, dim in (("observation.state", STATE_DIM), ("action", ACTION_DIM))}
    pre, post = processor_pi0.make_pi0_pre_post_processors(policy.config, dataset_stats=stats)
    tasks = ["pick up the red cube", "open the drawer"]
    obs = [{**{k: torch.rand(IMAGE, generator=g) for k in CAMERAS},
            "observation.state": torch.randn(STATE_DIM, generator=g), "task": t} for t in tasks]
    model = policy.model
    sample_noise = model.sample_noise
    noises = []

    def noise_rec(shape, device):
        noises.append(sample_noise(shape, device))
        return noises[-1]

    model.sample_noise = noise_rec
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
    (dst / "case.json").write_text(json.dumps({"tasks": tasks, "noise_seed": 0,
                                               "model": "../model.safetensors (identical bytes)"}, indent=1) + "\n")


def redraw(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            std = 0.1 if "norm" in name else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * std)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parents[1] / "tests" / "fixtures" / "lerobot" / "pi0"))
    args = ap.parse_args()

    import lerobot
    import transformers
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.pi0 import modeling_pi0 as mp
    from lerobot.policies.pi0.configuration_pi0 import PI0Config

    tiny_configs(mp)
    torch.manual_seed(SEED)
    features_in = {k: PolicyFeature(FeatureType.VISUAL, IMAGE) for k in CAMERAS}
    features_in["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
    config = PI0Config(input_features=features_in,
                       output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
                       chunk_size=CHUNK, n_action_steps=CHUNK, max_state_dim=MAX_DIM, max_action_dim=MAX_DIM,
                       image_resolution=RES, tokenizer_max_length=LANG, dtype="float32", device="cpu")
    policy = mp.PI0Policy(config)
    redraw(policy)
    policy.eval()

    g = torch.Generator().manual_seed(1)
    batch = {k: torch.rand((BATCH, *IMAGE), generator=g) for k in CAMERAS}
    batch["observation.state"] = torch.randn(BATCH, STATE_DIM, generator=g)
    batch["action"] = torch.randn(BATCH, CHUNK, ACTION_DIM, generator=g)
    tokens = torch.randint(1, VOCAB - 1, (BATCH, LANG), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
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
        losses = model.forward(images, img_masks, tokens, mask, policy.prepare_state(batch),
                               policy.prepare_action(batch), train_noise, train_time)
        prefix, prefix_pad, _ = model.embed_prefix(images, img_masks, tokens, mask)
    torch.manual_seed(SEED + 1)
    chunk = policy.predict_action_chunk(dict(batch))
    infer_noise = drawn["noise"][1]
    print("loss", float(loss), "chunk", tuple(chunk.shape))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(Path(tmp))
        for name in ("config.json", "model.safetensors"):
            shutil.copy(Path(tmp) / name, out / name)
    case = {
        **{f"image{i}": batch[k].contiguous() for i, k in enumerate(CAMERAS)},
        "images_resized": torch.stack(images, 1).contiguous(),
        "state": batch["observation.state"], "actions": batch["action"],
        "tokens": tokens, "tokens_mask": mask,
        "train_noise": train_noise, "train_time": train_time,
        "loss": loss.detach().reshape(1), "losses": losses,
        "prefix": prefix, "prefix_mask": prefix_pad,
        "infer_noise": infer_noise, "chunk": chunk,
    }
    save_file({k: v.contiguous() for k, v in case.items()}, str(out / "case.safetensors"))
    info = {
        "lerobot": lerobot.__version__ if hasattr(lerobot, "__version__") else "0.4.1",
        "transformers": transformers.__version__ + " + openpi transformers_replace",
        "torch": torch.__version__, "seed": SEED, "batch": BATCH, "cameras": list(CAMERAS),
        "image": list(IMAGE), "image_resolution": list(RES), "state_dim": STATE_DIM, "action_dim": ACTION_DIM,
        "chunk": CHUNK, "max_dim": MAX_DIM, "vocab": VOCAB, "vlm": VLM, "expert": EXPERT, "vision": VISION,
        "num_steps": config.num_inference_steps,
        "made_by": "scripts/parity/lerobot_pi0.py: PI0Policy.forward (noise/time captured from its own draws), "
                   "PI0Pytorch.forward, embed_prefix, predict_action_chunk (noise captured)",
    }
    (out / "case.json").write_text(json.dumps(info, indent=1) + "\n")
    import_case(policy, out)
    print("wrote", out)


if __name__ == "__main__":
    main()
