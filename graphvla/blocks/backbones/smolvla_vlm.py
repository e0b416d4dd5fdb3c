"""`backbone.smolvla_vlm`: the vision-language half of LeRobot's SmolVLA (lerobot.policies.smolvla,
Shukor et al. 2025), checked against LeRobot 0.4.1's own code: tests/test_lerobot_smolvla.py.

A SmolVLM (Idefics3-family) model from its config: transformers' SigLIP vision tower and
pixel-shuffle connector, and the first `num_vlm_layers` layers of its Llama text model, run over
SmolVLA's prefix:

- every camera resized to `image_size` keeping its aspect ratio (bilinear) and padded with zeros on
  the top and left, mapped from [0, 1] to [-1, 1], through the vision tower and the connector, the
  tokens scaled by sqrt(width);
- the language tokens' embeddings scaled by sqrt(width) (their padding mask kept);
- the state, zero-padded to `max_state_dim` (the last step of a history), through a linear layer
  (`state_proj`) as one token.

Attention: image and language tokens attend to each other (not to padding), the state token to
everything before it; positions count real tokens only. Rotary positions as SmolVLA applies them
(base 10000, halves rotated, in float32), attention in float32 with head_dim^-0.5.

Outputs what the action expert (head.smolvla_expert) reads of every kept layer: the rotated keys
and the values ([B, layers, T, kv_heads * head_dim]) and the prefix mask [B, T]. The prefix does
not depend on the expert (SmolVLA masks the action tokens from it), so this split computes what
LeRobot's joint forward and its KV cache compute.

Language: `text` (B instructions) is tokenized by the block's processor step as LeRobot's
preprocessor does (a newline appended, the VLM's tokenizer `with.tokenizer`, right padded to the
longest row, truncated to `max_length`: processors/smolvla.py), or `tokens` / `tokens_mask` are wired.

`weights`: a LeRobot SmolVLA save (folder, its model.safetensors, or a Hub id such as
lerobot/smolvla_base) whose `model.vlm_with_expert.vlm.model.*` and `model.state_proj.*` tensors are
read; 'none' leaves the parameters initialized (a run's checkpoint fills them).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError, parameters_are_placeholders
from ..registry import register
from . import hf_config
from .paligemma import load_tokenizer, text_token_ports
from ...processors.block import bind
from ...processors.smolvla import SmolVLATokens

VLM_PREFIX = "model.vlm_with_expert.vlm.model."
EXPERT_PREFIX = "model.vlm_with_expert.lm_expert."
COMPILED = "model._orig_mod."


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary positions on x [B, T, H, D] at positions [B, T], SmolVLA's layout: the first half of
    each head rotates against the second, angles position / base^(2i / D), computed in float32."""
    dtype, half = x.dtype, x.shape[-1] // 2
    x = x.float()
    inv = base ** ((2.0 / x.shape[-1]) * torch.arange(half, dtype=torch.float32, device=x.device))
    angle = (positions.float()[..., None] / inv)[..., None, :]  # [B, T, 1, half]
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).to(dtype)


def attend(q, k, v, allowed, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """q [B, Tq, heads, D], k/v [B, Tk, kv_heads, D], allowed [B, Tq, Tk] bool -> [B, Tq, heads*D].
    Grouped-query attention in float32; disallowed scores take float32's lowest value (a row with
    nothing allowed averages every value, as SmolVLA's eager attention does)."""
    groups = heads // kv_heads
    k = k.repeat_interleave(groups, dim=2) if groups > 1 else k
    v = v.repeat_interleave(groups, dim=2) if groups > 1 else v
    scores = torch.matmul(q.float().transpose(1, 2), k.float().permute(0, 2, 3, 1)) * head_dim ** -0.5
    scores = torch.where(allowed[:, None], scores, torch.finfo(torch.float32).min)
    probs = scores.softmax(dim=-1).to(v.dtype)
    out = torch.matmul(probs, v.transpose(1, 2))  # [B, heads, Tq, D]
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], heads * head_dim)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """Projections of one layer (names as Llama's: q_proj, k_proj, v_proj, o_proj; no biases).
    `kv_in`: the width k_proj / v_proj read (the expert's cross-attention layers read the VLM's
    keys and values, not their own hidden states)."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int, kv_in: int | None = None):
        super().__init__()
        self.q_proj = nn.Linear(width, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(kv_in or width, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(kv_in or width, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, width, bias=False)


class MLP(nn.Module):
    def __init__(self, width: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, ffn, bias=False)
        self.up_proj = nn.Linear(width, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, width, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    """A pre-norm Llama layer whose attention the caller runs (it needs the other stream's keys)."""

    def __init__(self, width, heads, kv_heads, head_dim, ffn, eps, kv_in=None):
        super().__init__()
        self.input_layernorm = RMSNorm(width, eps)
        self.self_attn = Attention(width, heads, kv_heads, head_dim, kv_in)
        self.post_attention_layernorm = RMSNorm(width, eps)
        self.mlp = MLP(width, ffn)
        self.shape = (heads, kv_heads, head_dim)

    def qkv(self, x, positions):
        """Normalized x [B, T, W] -> rotated q, rotated k, v, each [B, T, heads, D]."""
        h = self.input_layernorm(x)
        heads, kv_heads, d = self.shape
        q = self.self_attn.q_proj(h).unflatten(-1, (heads, d))
        k = self.self_attn.k_proj(h).unflatten(-1, (kv_heads, d))
        v = self.self_attn.v_proj(h).unflatten(-1, (kv_heads, d))
        return rotate(q, positions), rotate(k, positions), v

    def finish(self, x, attended):
        x = x + self.self_attn.o_proj(attended)
        return x + self.mlp(self.post_attention_layernorm(x))


def prefix_mask_2d(pad: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """[B, T] real-token mask and block starts (1 opens a block a token's predecessors cannot see)
    -> [B, T, T] allowed: a query sees the real keys whose block index is not after its own."""
    level = blocks.long().cumsum(dim=1)
    return (level[:, None, :] <= level[:, :, None]) & pad[:, None, :] & pad[:, :, None]


def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, size, size]: scaled by the larger side's ratio (bilinear), the rest
    padded with zeros at the top and the left."""
    h, w = images.shape[-2:]
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False)
    return F.pad(out, (max(0, size - rw), 0, max(0, size - rh), 0), value=0.0)


def read_weights(path: Path, key: str) -> dict:
    """The tensors of a LeRobot save: a folder holding model.safetensors, or the file. A save of a
    torch.compile'd policy names its tensors model._orig_mod.*: read as model.* (LeRobot's own loader
    renames them so)."""
    from safetensors.torch import load_file

    file = path / "model.safetensors" if path.is_dir() else path
    if not file.exists():
        raise ParamError(key, f"{path} holds no model.safetensors (a LeRobot SmolVLA save is expected)")
    return {uncompiled(k): v for k, v in load_file(str(file)).items()}


def uncompiled(name: str) -> str:
    return "model." + name[len(COMPILED):] if name.startswith(COMPILED) else name


def take(tensors: dict, prefix: str, module: nn.Module, key: str, skip=()) -> None:
    """Load `module` strictly from the tensors under `prefix` (minus names starting with `skip`)."""
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and not k[len(prefix):].startswith(tuple(skip))}
    expected = set(module.state_dict())
    missing, extra = sorted(expected - set(own)), sorted(set(own) - expected)
    if missing or extra:
        raise ParamError(key, f"the weights do not fit under '{prefix}': missing {missing[:4]}, unexpected {extra[:4]}")
    module.load_state_dict(own, strict=True)


def _vision_modules(config):
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMConnector, SmolVLMVisionTransformer

    config.vision_config._attn_implementation = "eager"
    return SmolVLMVisionTransformer(config.vision_config), SmolVLMConnector(config)


@register
class SmolVLAVLM(Block):
    type_name = "backbone.smolvla_vlm"
    description = ("LeRobot SmolVLA's prefix: SmolVLM vision tower + connector, language embeddings and a state token "
                   "through the first N text layers -> every layer's keys and values for the action expert.")
    in_ports = {
        "images": InPort("image", ndim=5, doc="[B, V, C, H, W] in [0, 1]"),
        "text": InPort("text", optional=True, doc="B instructions: the block's step tokenizes them (with.tokenizer)"),
        "tokens": InPort("tokens", optional=True, ndim=2, doc="[B, L] language token ids (right padded), instead of text"),
        "tokens_mask": InPort("mask", optional=True, ndim=2, doc="[B, L] True on real tokens (with tokens)"),
        "state": InPort("state", ndim=(2, 3), doc="[B, D] or [B, history, D] (normalized)"),
    }
    out_ports = {
        "keys": OutPort("layers", doc="[B, layers, T, kv_heads*head_dim] rotated keys of every kept layer"),
        "values": OutPort("layers", doc="[B, layers, T, kv_heads*head_dim] values of every kept layer"),
        "mask": OutPort("mask", doc="[B, T] real prefix tokens"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "config": {"description": "the SmolVLM config: a bundled name (smolvlm2_500m_video), a folder or a dict with model_type"},
            "num_vlm_layers": {"type": "integer", "minimum": 1, "default": 16, "description": "text layers kept (the first ones)"},
            "image_size": {"type": "integer", "minimum": 1, "default": 512, "description": "resize_imgs_with_padding's side"},
            "max_state_dim": {"type": "integer", "minimum": 1, "default": 32, "description": "the state is zero-padded to it"},
            "weights": {"type": "string", "default": "none", "description": "'none' or a LeRobot SmolVLA save (folder, file or Hub id)"},
            "tokenizer": {"type": "string", "default": "none",
                          "description": "the VLM's tokenizer (folder or Hub id) for the text step; 'none' with tokens wired"},
            "max_length": {"type": "integer", "minimum": 1, "default": 48, "description": "tokenizer_max_length"},
            "patch_positions": {"enum": ["index", "shifted"], "default": "index",
                                "description": "vision patch positions as transformers 4.51 / 5.x (index) or 4.57 (shifted) compute them"},
            "truncate": {"type": "boolean", "default": True,
                         "description": "cut prompts to max_length (LeRobot 0.4; LeRobot 0.3.2 did not)"},
            "train_vlm": {"type": "boolean", "default": False,
                          "description": "train the VLM's layers and embeddings (SmolVLA's train_expert_only: false)"},
            "train_vision": {"type": "boolean", "default": False,
                             "description": "train the vision tower and connector (SmolVLA's freeze_vision_encoder: false)"},
        },
        "required": ["config"],
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        source = p["config"]
        if isinstance(source, str) and not hf_config.CONFIG_DIR.joinpath(source).exists():
            source = ctx.resolve_path(source, "config")
        try:
            config = hf_config.make_config(source)
        except (ValueError, OSError) as e:
            raise ParamError("config", str(e)) from None
        if getattr(config, "model_type", None) not in ("smolvlm", "idefics3"):
            raise ParamError("config", f"expects a SmolVLM / Idefics3 config, got model_type '{getattr(config, 'model_type', None)}'")
        text = config.text_config
        if p["num_vlm_layers"] > text.num_hidden_layers:
            raise ParamError("num_vlm_layers", f"{p['num_vlm_layers']} > the model's {text.num_hidden_layers} text layers")
        state = inputs.get("state")
        if state is not None and state.shape is not None and state.shape[-1] > p["max_state_dim"]:
            raise PortError("state", f"dim {state.shape[-1]} > with.max_state_dim={p['max_state_dim']}")
        if ("text" in inputs) == ("tokens" in inputs) or ("tokens" in inputs) != ("tokens_mask" in inputs):
            raise PortError("text", "wire either text (tokenized by the block's step) or tokens and tokens_mask")
        self.tokenizer = None
        if "text" in inputs:
            if p["tokenizer"] == "none":
                raise ParamError("tokenizer", "text is wired: with.tokenizer must name the VLM's tokenizer (folder or Hub id)")
            self.tokenizer = load_tokenizer(ctx, p["tokenizer"])
        self.width = text.hidden_size
        self.heads, self.kv_heads = text.num_attention_heads, text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or self.width // self.heads
        self.vision_model, self.connector = _vision_modules(config)
        self.embed_tokens = nn.Embedding(text.vocab_size, self.width)
        self.layers = nn.ModuleList(
            Layer(self.width, self.heads, self.kv_heads, self.head_dim, text.intermediate_size, text.rms_norm_eps)
            for _ in range(p["num_vlm_layers"]))
        self.state_proj = nn.Linear(p["max_state_dim"], self.width)
        self.text_config = text
        # SmolVLA's defaults: only the state projection of this half trains
        for module, train in ((self.vision_model, p["train_vision"] and p["train_vlm"]),
                              (self.connector, p["train_vlm"]), (self.embed_tokens, p["train_vlm"]), (self.layers, p["train_vlm"])):
            module.requires_grad_(bool(train))
        if p["weights"] != "none" and not ctx.meta and not parameters_are_placeholders():
            self.load_lerobot(read_weights(ctx.resolve_path(p["weights"], "weights"), "weights"))

    def step_ports(self, wired):
        return text_token_ports(wired)

    def processor_step(self, node=None, sources=None):
        if "text" not in self.port_info:
            return None
        return bind(SmolVLATokens, self, node, sources, ("text",), ("tokens", "tokens_mask"), self.tokenizer,
                    self.params["max_length"], self.params["truncate"])

    def load_lerobot(self, tensors: dict, key: str = "weights") -> None:
        """This block's tensors from a LeRobot SmolVLA state dict (LeRobot's names)."""
        mine = {}
        for name, t in tensors.items():
            if name.startswith(VLM_PREFIX + "vision_model."):
                mine["vision_model." + name[len(VLM_PREFIX + "vision_model."):]] = t
            elif name.startswith(VLM_PREFIX + "connector."):
                mine["connector." + name[len(VLM_PREFIX + "connector."):]] = t
            elif name.startswith(VLM_PREFIX + "text_model.embed_tokens."):
                mine["embed_tokens." + name.rsplit(".", 1)[1]] = t
            elif name.startswith(VLM_PREFIX + "text_model.layers."):
                mine["layers." + name[len(VLM_PREFIX + "text_model.layers."):]] = t
            elif name.startswith("model.state_proj."):
                mine[name[len("model."):]] = t
        take(mine, "", self, key)

    # ------------------------------------------------------------------------------------------
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        flat = resize_with_pad(images.flatten(0, 1).float(), self.params["image_size"]) * 2.0 - 1.0
        dtype = self.connector.modality_projection.proj.weight.dtype
        hidden = self.vision_features(flat.to(dtype))
        tokens = self.connector(hidden)
        tokens = tokens * torch.tensor(tokens.shape[-1] ** 0.5, dtype=tokens.dtype)
        return tokens.unflatten(0, (b, v)).flatten(1, 2)  # [B, V*n, W], views in order

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """SigLIP over whole images [N, C, S, S] -> [N, patches, width]. Patch k of n per side takes
        the position bucket of a fraction of the side among its `num_patches_per_side` equal buckets;
        transformers versions differ in that fraction (with.patch_positions): `index` k / n (4.51,
        which LeRobot 0.3.x pins and SmolVLA was trained with, and 5.x: patch k in bucket k when
        n is the full side), `shifted` k / n * (1 - 1e-6) (4.57, what LeRobot 0.4 installs: patch k
        in bucket k - 1 for k >= 1)."""
        tower = self.vision_model
        emb = tower.embeddings
        x = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)
        n_h, n_w = pixels.shape[-2] // emb.patch_size, pixels.shape[-1] // emb.patch_size
        side = emb.num_patches_per_side
        bounds = torch.arange(1 / side, 1.0, 1 / side, device=pixels.device)

        shifted = self.params["patch_positions"] == "shifted"

        def buckets(n):
            k = torch.arange(n, device=pixels.device, dtype=pixels.dtype)
            frac = k / n * (1 - 1e-6) if shifted else (k * (1.0 / n)).clamp(max=1 - 1e-6)
            return torch.bucketize(frac, bounds, right=True)

        ids = (buckets(n_h)[:, None] * side + buckets(n_w)[None, :]).flatten()
        x = x + emb.position_embedding(ids)[None]
        for layer in tower.encoder.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return tower.post_layernorm(x)

    def prefix(self, images, tokens, tokens_mask, state):
        img = self.embed_images(images)
        lang = self.embed_tokens(tokens)
        lang = lang * math.sqrt(lang.shape[-1])
        if state.dim() == 3:
            state = state[:, -1]
        pad = self.params["max_state_dim"] - state.shape[-1]
        if pad < 0:
            raise PortError("state", f"dim {state.shape[-1]} > with.max_state_dim={self.params['max_state_dim']}")
        st = self.state_proj(F.pad(state.to(self.state_proj.weight.dtype), (0, pad)))[:, None]
        embs = torch.cat([img, lang.to(img.dtype), st.to(img.dtype)], dim=1)
        b = embs.shape[0]
        ones = torch.ones(b, img.shape[1], dtype=torch.bool, device=embs.device)
        mask = torch.cat([ones, tokens_mask.bool(), ones[:, :1]], dim=1)
        blocks = torch.zeros_like(mask)
        blocks[:, -1] = True  # the state token opens its own block
        return embs, mask, blocks

    def forward(self, images=None, tokens=None, tokens_mask=None, state=None):
        if tokens.shape != tokens_mask.shape:
            raise PortError("tokens_mask", f"expects the tokens' shape {list(tokens.shape)}, got {list(tokens_mask.shape)}")
        x, mask, blocks = self.prefix(images, tokens, tokens_mask, state)
        allowed = prefix_mask_2d(mask, blocks)
        positions = mask.long().cumsum(dim=1) - 1
        keys, values = [], []
        for layer in self.layers:
            q, k, v = layer.qkv(x, positions)
            keys.append(k.flatten(2))
            values.append(v.flatten(2))
            x = layer.finish(x, attend(q, k, v, allowed, self.heads, self.kv_heads, self.head_dim).to(x.dtype))
        return {"keys": torch.stack(keys, dim=1), "values": torch.stack(values, dim=1), "mask": mask}

    def meta_forward(self, images=None, tokens=None, tokens_mask=None, state=None, text=None):
        b = images.shape[0]
        n = images.shape[1] * self.image_tokens() + (self.params["max_length"] if tokens is None else tokens.shape[1]) + 1
        kv = self.kv_heads * self.head_dim
        shape = (b, len(self.layers), n, kv)
        return {"keys": torch.empty(shape, device="meta"), "values": torch.empty(shape, device="meta"),
                "mask": torch.empty(b, n, dtype=torch.bool, device="meta")}

    def image_tokens(self) -> int:
        vc = self.vision_model.config
        patches = (self.params["image_size"] // vc.patch_size) ** 2
        return patches // (self.connector.scale_factor ** 2)
