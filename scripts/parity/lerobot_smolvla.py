"""Parity fixtures from LeRobot's own SmolVLA (run OUTSIDE the package, in a side virtual environment
holding a pinned LeRobot: scripts/check_lerobot.sh makes /tmp/lerobot-venvs/lerobot-0.4.1, whose
transformers is 4.57.1).

Builds LeRobot's SmolVLAPolicy on a tiny SmolVLM (Idefics3 family) config written to a temporary
folder (SigLIP vision tower of width 32 on 32 x 32 images in 8 x 8 patches, pixel-shuffle connector
with scale factor 2, a Llama text model of width 64 with 6 layers, 4 query / 2 key-value heads of 16,
of which SmolVLA keeps the first 4), an action expert at 0.75 of the width with self-attention every
2nd layer and cross-attention between, max_state_dim / max_action_dim 6 (padding a 4-d state and
3-d actions), chunks of 5 and 10 Euler steps. Two cameras of 24 x 40 (resized with padding to 32 x
32 by SmolVLA), language tokens with right padding. Every parameter is redrawn with a fixed seed
(scaled normal draws) so the numbers are not transformers' init. LeRobot's processor (AutoProcessor
of the VLM folder) is only read for two special-token ids SmolVLA keeps but does not use with
add_image_special_tokens false: a stub stands in (no tokenizer is needed: tokens are inputs).

Records on a fixed batch, with LeRobot's own code: the training loss with noise and time passed
explicitly (time drawn by LeRobot's own sample_time, Beta(1.5, 1) * 0.999 + 0.001, under a seed),
its per-element losses, the prefix embeddings and masks (embed_prefix), and predict_action_chunk
with explicit noise (eval mode, 10 Euler steps through the KV cache). Writes
tests/fixtures/lerobot/smolvla/:

  config.json            the config.json LeRobot's save_pretrained wrote (verbatim)
  vlm_config.json        the tiny SmolVLM config (vlm_model_name's folder)
  model.safetensors      LeRobot's saved weights (verbatim)
  case.safetensors       inputs and LeRobot's outputs
  case.json              sizes, versions, how the case was made
  processors/            LeRobot's policy_preprocessor.json / policy_postprocessor.json and their
                         normalizer state files (the import case: raw observations with task
                         strings through LeRobot's own processors and predict_action_chunk)
  tokenizer/             the tokenizer (read, not written: a tiny byte-level BPE GraphVLA's
                         blocks/backbones/tiny_hf.py trained offline), copied into the VLM folder

    /tmp/lerobot-venvs/lerobot-0.4.1/bin/python scripts/parity/lerobot_smolvla.py [--out DIR]
    /tmp/smolvla032-venv/bin/python scripts/parity/lerobot_smolvla.py --format-03   (then: main_03's doc)

LeRobot 0.3.2's SmolVLA needs transformers < 4.52, which its venv lacks: /tmp/smolvla032-venv is
`python3 -m venv --system-site-packages` with `pip install --no-deps transformers==4.51.3
tokenizers==0.21.1` and a .pth file naming /tmp/lerobot-venvs/lerobot-0.3.2's site-packages.
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
sys.path.insert(0, str(HERE.parent))  # scripts/: check_lerobot's torchvision workaround
from check_lerobot import _torchvision_without_compiled_ops  # noqa: E402

print(_torchvision_without_compiled_ops())

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

SEED = 0
BATCH = 2
CAMERAS = ("observation.images.top", "observation.images.wrist")
IMAGE = (3, 24, 40)
STATE_DIM, ACTION_DIM, CHUNK = 4, 3, 5
LANG = 6
TASKS = ("pick the cube", "open the top drawer and put the bowl inside")  # the second is truncated
VLM_CONFIG = {
    "model_type": "smolvlm",
    "scale_factor": 2,
    "image_token_id": 90,
    "tie_word_embeddings": False,
    "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                      "num_channels": 3, "layer_norm_eps": 1e-6},
    "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 400,
                    "rms_norm_eps": 1e-5, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                    "max_position_embeddings": 256, "rope_theta": 100000.0},
}
TINY = dict(chunk_size=CHUNK, n_action_steps=CHUNK, max_state_dim=6, max_action_dim=6,
            resize_imgs_with_padding=(32, 32), num_steps=10, num_vlm_layers=4, num_expert_layers=-1,
            self_attn_every_n_layers=2, expert_width_multiplier=0.75, load_vlm_weights=False,
            tokenizer_max_length=LANG, device="cpu")


class _StubProcessor:
    """SmolVLA reads processor.tokenizer.fake_image_token_id / global_image_token_id only."""

    @staticmethod
    def from_pretrained(*a, **k):
        return SimpleNamespace(tokenizer=SimpleNamespace(fake_image_token_id=91, global_image_token_id=92))


def redraw(module: torch.nn.Module, seed: int) -> None:
    """Every parameter redrawn: matrices N(0, 1/fan_in), norm weights 1 + 0.1 N, biases 0.1 N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main_03(out: Path) -> int:
    """The 0.3.x import case, with LeRobot 0.3.2 (normalization buffers inside the model, the tokenizer
    inside the policy: no truncation there). Weights: the same seeded redraw as the 0.4.1 fixture (the
    same parameter names), checked equal to out/model.safetensors, so only the buffers are kept:
    out/import_03/ holds config.json, buffers.safetensors (the normalize_* tensors of LeRobot's
    model.safetensors), case.safetensors / case.json (raw observations with task strings, the tokens
    prepare_language made and predict_action_chunk with the noise given)."""
    from importlib.metadata import version

    import transformers
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla import modeling_smolvla, smolvlm_with_expert
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    dest = out / "import_03"
    with tempfile.TemporaryDirectory() as tmp:
        vlm_dir = Path(tmp) / "vlm"
        vlm_dir.mkdir()
        (vlm_dir / "config.json").write_text(json.dumps(VLM_CONFIG, indent=1))
        for f in (out / "tokenizer").iterdir():
            shutil.copy(f, vlm_dir / f.name)
        tokenizer = AutoTokenizer.from_pretrained(str(vlm_dir))

        class Processor(_StubProcessor):  # 0.3.2 reads .tokenizer to tokenize the task
            @staticmethod
            def from_pretrained(*a, **k):
                return SimpleNamespace(tokenizer=tokenizer)

        smolvlm_with_expert.AutoProcessor = _StubProcessor
        modeling_smolvla.AutoProcessor = Processor
        torch.manual_seed(SEED)
        features_in = {k: PolicyFeature(FeatureType.VISUAL, IMAGE) for k in CAMERAS}
        features_in["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
        tiny = {k: v for k, v in TINY.items()}
        config = SmolVLAConfig(input_features=features_in,
                               output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
                               vlm_model_name=str(vlm_dir), **tiny)
        g = torch.Generator().manual_seed(SEED + 30)
        stats = {"observation.state": {"mean": torch.randn(STATE_DIM, generator=g), "std": 0.5 + torch.rand(STATE_DIM, generator=g)},
                 "action": {"mean": torch.randn(ACTION_DIM, generator=g), "std": 0.5 + torch.rand(ACTION_DIM, generator=g)}}
        policy = SmolVLAPolicy(config, dataset_stats=stats)
        redraw(policy.model, SEED + 7)  # 0.3.2's normalization buffers are parameters too: leave them
        reference = load_file(str(out / "model.safetensors"))
        own = {k: v for k, v in policy.state_dict().items() if not k.startswith(("normalize_", "unnormalize_"))}
        assert set(own) == set(reference) and all(torch.equal(own[k], reference[k]) for k in own), \
            "the 0.3.2 redraw differs from the 0.4.1 fixture's weights"
        images = {k: torch.rand(BATCH, *IMAGE, generator=g) for k in CAMERAS}
        state = stats["observation.state"]["mean"] + torch.randn(BATCH, STATE_DIM, generator=g)
        noise = torch.cat([torch.randn(1, CHUNK, TINY["max_action_dim"], generator=torch.Generator().manual_seed(0))
                           for _ in range(BATCH)])
        batch = {**images, "observation.state": state, "task": list(TASKS)}
        policy.eval()
        policy.reset()
        tokens, mask = policy.prepare_language(dict(batch))
        with torch.no_grad():
            chunk = policy.predict_action_chunk(dict(batch), noise=noise.clone())
        saved = Path(tmp) / "smolvla"
        policy.save_pretrained(saved)
        tensors = load_file(str(saved / "model.safetensors"))
        buffers = {k: v for k, v in tensors.items() if k.startswith(("normalize_", "unnormalize_"))}
        assert all(torch.equal(tensors[k], reference[k]) for k in reference)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved / "config.json", dest / "config.json")
        save_file(buffers, str(dest / "buffers.safetensors"))
    save_file({**{f"image.{k}": v.contiguous() for k, v in images.items()}, "state": state, "noise": noise,
               "tokens": tokens, "tokens_mask": mask, "predict_action_chunk": chunk}, str(dest / "case.safetensors"))
    (dest / "case.json").write_text(json.dumps({
        "policy": "smolvla", "lerobot": version("lerobot"), "transformers": transformers.__version__,
        "torch": torch.__version__, "tasks": list(TASKS), "made_by": "scripts/parity/lerobot_smolvla.py --format-03",
        "saved_keys": sorted(tensors)}, indent=1) + "\n")
    print("0.3 chunk", chunk.shape, "tokens", tokens.shape)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parents[1] / "tests" / "fixtures" / "lerobot" / "smolvla"))
    ap.add_argument("--format-03", action="store_true", help="the 0.3.x import case (LeRobot 0.3.2; see main_03)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.format_03:
        return main_03(out)

    from importlib.metadata import version

    import transformers
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla import smolvlm_with_expert
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy, make_att_2d_masks

    smolvlm_with_expert.AutoProcessor = _StubProcessor
    with tempfile.TemporaryDirectory() as tmp:
        vlm_dir = Path(tmp) / "vlm"
        vlm_dir.mkdir()
        (vlm_dir / "config.json").write_text(json.dumps(VLM_CONFIG, indent=1))
        for f in (out / "tokenizer").iterdir():  # the tiny byte-level BPE tokenizer (tokenizer/ in the fixture)
            shutil.copy(f, vlm_dir / f.name)
        torch.manual_seed(SEED)
        features_in = {k: PolicyFeature(FeatureType.VISUAL, IMAGE) for k in CAMERAS}
        features_in["observation.state"] = PolicyFeature(FeatureType.STATE, (STATE_DIM,))
        config = SmolVLAConfig(input_features=features_in,
                               output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
                               vlm_model_name=str(vlm_dir), **TINY)
        policy = SmolVLAPolicy(config)
        redraw(policy, SEED + 7)
        model = policy.model

        g = torch.Generator().manual_seed(SEED + 1)
        images = {k: torch.rand(BATCH, *IMAGE, generator=g) for k in CAMERAS}
        state = torch.randn(BATCH, STATE_DIM, generator=g)
        action = torch.randn(BATCH, CHUNK, ACTION_DIM, generator=g)
        tokens = torch.randint(3, 90, (BATCH, LANG), generator=g)
        lang_mask = torch.ones(BATCH, LANG, dtype=torch.bool)
        lang_mask[1, 4:] = False  # right padding: the second prompt is 4 tokens
        tokens[1, 4:] = 0
        noise = torch.randn(BATCH, CHUNK, TINY["max_action_dim"], generator=g)
        infer_noise = torch.randn(BATCH, CHUNK, TINY["max_action_dim"], generator=g)
        torch.manual_seed(SEED + 2)
        time = model.sample_time(BATCH, "cpu")  # LeRobot's own Beta(1.5, 1) draw, recorded

        batch = {**images, "observation.state": state, "action": action,
                 "observation.language.tokens": tokens, "observation.language.attention_mask": lang_mask}
        policy.train()
        loss, parts = policy.forward(dict(batch), noise=noise.clone(), time=time.clone())
        losses = parts["losses_after_forward"]
        if not torch.is_tensor(losses):  # LeRobot 0.4.4+ reports their mean only: the model's forward again
            b = dict(batch)
            imgs, img_masks = policy.prepare_images(b)
            losses = model.forward(imgs, img_masks, tokens, lang_mask, policy.prepare_state(b), policy.prepare_action(b),
                                   noise.clone(), time.clone())
            # (0.5+ reports the mean over the policy's own action dims only)
            assert min(abs(losses.mean().item() - parts["losses_after_forward"]),
                       abs(losses[..., :ACTION_DIM].mean().item() - parts["losses_after_forward"])) < 1e-6
        with torch.no_grad():
            imgs, img_masks = policy.prepare_images(dict(batch))
            prefix, prefix_pad, prefix_att = model.embed_prefix(imgs, img_masks, tokens, lang_mask,
                                                                state=policy.prepare_state(batch))
            prefix_2d = make_att_2d_masks(prefix_pad, prefix_att)

        policy.eval()
        policy.reset()
        obs = {k: v for k, v in batch.items() if k != "action"}
        with torch.no_grad():
            chunk = policy.predict_action_chunk(dict(obs), noise=infer_noise.clone())

        # the import case: LeRobot 0.4.1's own pre/post processors (newline, tokenizer, normalizer)
        # around predict_action_chunk, from raw observations with task strings
        from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

        stats = {"observation.state": {"mean": torch.randn(STATE_DIM, generator=g), "std": 0.5 + torch.rand(STATE_DIM, generator=g)},
                 "action": {"mean": torch.randn(ACTION_DIM, generator=g), "std": 0.5 + torch.rand(ACTION_DIM, generator=g)}}
        pre, post = make_smolvla_pre_post_processors(config, dataset_stats=stats)
        raw_images = {k: torch.rand(BATCH, *IMAGE, generator=g) for k in CAMERAS}
        raw_state = stats["observation.state"]["mean"] + torch.randn(BATCH, STATE_DIM, generator=g)
        raw = {**raw_images, "observation.state": raw_state, "task": list(TASKS)}
        # each row's noise as a GraphVLA session seeded 0 draws it (a served client's first chunk)
        import_noise = torch.cat([torch.randn(1, CHUNK, TINY["max_action_dim"], generator=torch.Generator().manual_seed(0))
                                  for _ in range(BATCH)])
        processed = pre(dict(raw))
        policy.reset()
        with torch.no_grad():
            import_chunk = post(policy.predict_action_chunk(dict(processed), noise=import_noise.clone()))

        saved = Path(tmp) / "smolvla"
        policy.save_pretrained(saved)
        pre.save_pretrained(saved)
        post.save_pretrained(saved)
        proc = out / "processors"
        shutil.rmtree(proc, ignore_errors=True)
        proc.mkdir(parents=True)
        for f in saved.iterdir():
            if f.name not in ("config.json", "model.safetensors"):
                shutil.copy(f, proc / f.name)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved / "config.json", out / "config.json")
        shutil.copy(saved / "model.safetensors", out / "model.safetensors")
        (out / "vlm_config.json").write_text(json.dumps(VLM_CONFIG, indent=1) + "\n")

    case = {**{f"image.{k}": v for k, v in images.items()}, "state": state, "action": action,
            "tokens": tokens, "tokens_mask": lang_mask, "noise": noise, "time": time,
            "loss": loss.detach().reshape(()), "losses": losses.detach(),
            "prefix_embs": prefix, "prefix_pad_masks": prefix_pad, "prefix_att_2d": prefix_2d,
            "infer_noise": infer_noise, "predict_action_chunk": chunk,
            **{f"import.image.{k}": v for k, v in raw_images.items()}, "import.state": raw_state,
            "import.tokens": processed["observation.language.tokens"],
            "import.tokens_mask": processed["observation.language.attention_mask"],
            "import.noise": import_noise, "import.predict_action_chunk": import_chunk}
    save_file({k: v.contiguous() for k, v in case.items()}, str(out / "case.safetensors"))
    (out / "case.json").write_text(json.dumps({
        "policy": "smolvla", "lerobot": version("lerobot"), "transformers": transformers.__version__,
        "torch": torch.__version__, "seed": SEED, "cameras": list(CAMERAS), "image": list(IMAGE),
        "state_dim": STATE_DIM, "action_dim": ACTION_DIM, "chunk_size": CHUNK, "batch": BATCH,
        "tiny": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
        "made_by": "scripts/parity/lerobot_smolvla.py",
        "loss": float(loss.detach()), "noise": "passed to SmolVLAPolicy.forward / predict_action_chunk",
        "time": "LeRobot's VLAFlowMatching.sample_time under torch.manual_seed(1), passed to forward",
        "import_tasks": list(TASKS),
        "import": "processors/: LeRobot's policy_preprocessor / policy_postprocessor save (tokenizer_name and the "
                  "config's vlm_model_name name a temporary folder holding vlm_config.json and tokenizer/)"},
        indent=1) + "\n")
    print("loss", float(loss), "chunk", chunk.shape, "prefix", prefix.shape)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
