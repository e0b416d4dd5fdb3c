"""`backbone.paligemma`: PaliGemma's prefix as pi0 uses it (Black et al. 2024; LeRobot 0.4's pi0, the
port of openpi's PyTorch model; checked against LeRobot 0.4.1's own code: tests/test_lerobot_pi0.py).

Facts of that model, written here in torch:
- images: each camera [B, 3, H, W] in [0, 1] is resized to `image_size` keeping its aspect ratio
  (bilinear, no antialiasing, sizes truncated to integers) and padded evenly on both sides (the extra
  pixel after) with -1 when its size differs, then scaled to [-1, 1] (x * 2 - 1; LeRobot pads before
  that scaling, so its padding ends at -3, and so does this block's);
- SigLIP's vision tower: a patch convolution plus learned positions, pre-norm encoder layers
  (LayerNorm eps 1e-6, attention with biases, GELU (tanh) MLP), a final LayerNorm; no pooling head.
  A linear projector takes each patch token to the language model's width (no 1/sqrt(width)
  scaling: openpi's PaliGemma);
- the language tokens through Gemma's embedding times sqrt(width);
- Gemma's decoder over [every camera's tokens, the language tokens] with prefix-LM attention (every
  valid prefix token sees every valid prefix token), positions = running count of valid tokens - 1,
  RMSNorm x * (1 + w) in float32, rotary embeddings (theta 10000) on halves, multi-query attention,
  GELU (tanh)-gated MLP.

Outputs: `kv` [B, layers, 2, T, kv_heads * head_dim] (every layer's keys after the rotary embedding
and values: what pi0's action expert attends to, LeRobot's prefix KV cache), `prefix_mask` [B, T]
(valid prefix tokens), and with `with.hidden` `hidden` [B, T, width] (the decoder's last layer after
the final norm; without it the last layer stops at its keys and values, all pi0 reads).
Language: either `tokens` / `tokens_mask` are wired (made before the graph, e.g. by LeRobot's tokenizer
step on a client), or `text` (B instructions) is, and the block's processor step makes them as
LeRobot's preprocessor does: a newline appended (pi0's; `with.newline: false` for pi0.5), PaliGemma's tokenizer (`with.tokenizer`, a folder or
Hub id; its files become the run's assets), truncated and right-padded to `with.max_length`
(processors/paligemma.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError, StepPorts, parameters_are_placeholders
from ..registry import register
from ...processors.block import bind
from ...processors.paligemma import PaliGemmaTokens

MASK_VALUE = -2.3819763e38  # openpi's (big_vision's) attention mask value


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: computed in float32, scaled by (1 + weight)."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (out * (1.0 + weight.float())).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def rope(positions: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [B, T, head_dim] for integer positions [B, T] (frequencies repeated over halves)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim]; cos/sin [B, T, head_dim]."""
    cos, sin = cos[:, None], sin[:, None]
    h = x.shape[-1] // 2
    rotated = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rotated * sin


def attention(q, k, v, mask, scale):
    """q [B, H, Tq, d], k/v [B, Hkv, Tk, d], mask [B, Tq, Tk] (True: may attend) -> [B, Tq, H*d]."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    logits = torch.matmul(q, k.transpose(2, 3)) * scale
    bias = torch.where(mask[:, None], 0.0, MASK_VALUE).to(logits.dtype)
    probs = F.softmax(logits + bias, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


class GemmaLayer(nn.Module):
    """One Gemma decoder layer, split so that two of them (PaliGemma's and the action expert's) can
    share one attention: `qkv` then `finish`."""

    def __init__(self, width: int, mlp: int, heads: int, kv_heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.input_layernorm = RMSNorm(width, eps)
        self.post_attention_layernorm = RMSNorm(width, eps)
        self.self_attn = nn.ModuleDict({
            "q_proj": nn.Linear(width, heads * head_dim, bias=False),
            "k_proj": nn.Linear(width, kv_heads * head_dim, bias=False),
            "v_proj": nn.Linear(width, kv_heads * head_dim, bias=False),
            "o_proj": nn.Linear(heads * head_dim, width, bias=False),
        })
        self.mlp = nn.ModuleDict({
            "gate_proj": nn.Linear(width, mlp, bias=False),
            "up_proj": nn.Linear(width, mlp, bias=False),
            "down_proj": nn.Linear(mlp, width, bias=False),
        })

    def qkv(self, x, cos, sin):
        """(q [B, H, T, d], k [B, Hkv, T, d], v [B, Hkv, T, d]) with the rotary embedding applied."""
        return self.project(self.input_layernorm(x), cos, sin)

    def project(self, h, cos, sin):
        """The normed states' queries, keys and values (rotary applied to q and k)."""
        b, t, _ = h.shape
        a = self.self_attn
        q = a["q_proj"](h).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = a["k_proj"](h).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = a["v_proj"](h).view(b, t, -1, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def feed_forward(self, h):
        """The GELU (tanh)-gated MLP of the normed states."""
        m = self.mlp
        return m["down_proj"](F.gelu(m["gate_proj"](h), approximate="tanh") * m["up_proj"](h))

    def finish(self, x, attended):
        x = x + self.self_attn["o_proj"](attended)
        return x + self.feed_forward(self.post_attention_layernorm(x))


class SiglipLayer(nn.Module):
    def __init__(self, width: int, mlp: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.self_attn = nn.ModuleDict({n: nn.Linear(width, width) for n in ("q_proj", "k_proj", "v_proj", "out_proj")})
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(width, mlp), "fc2": nn.Linear(mlp, width)})

    def forward(self, x):
        b, t, w = x.shape
        d = w // self.heads
        h = self.layer_norm1(x)
        a = self.self_attn
        q, k, v = (a[n](h).view(b, t, self.heads, d).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        probs = F.softmax(torch.matmul(q, k.transpose(2, 3)) * d ** -0.5, dim=-1, dtype=torch.float32).to(q.dtype)
        x = x + a["out_proj"](torch.matmul(probs, v).transpose(1, 2).reshape(b, t, w))
        h = self.layer_norm2(x)
        return x + self.mlp["fc2"](F.gelu(self.mlp["fc1"](h), approximate="tanh"))


class SiglipVision(nn.Module):
    def __init__(self, width, layers, mlp, heads, patch, image_size, eps=1e-6):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, patch, stride=patch)
        self.num_patches = (image_size // patch) ** 2
        self.position_embedding = nn.Embedding(self.num_patches, width)
        self.layers = nn.ModuleList(SiglipLayer(width, mlp, heads, eps) for _ in range(layers))
        self.post_layernorm = nn.LayerNorm(width, eps=eps)

    def forward(self, pixels):  # [N, 3, S, S] in [-1, 1]
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = x + self.position_embedding.weight[None]
        for layer in self.layers:
            x = layer(x)
        return self.post_layernorm(x)


def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [N, 3, size, size]: aspect kept, padded evenly with -1 (LeRobot 0.4's
    resize_with_pad_torch on float images)."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    return F.pad(out, (left, size - rw - left, top, size - rh - top), mode="constant", value=-1.0)


def prefix_positions(pad: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(pad.long(), dim=1) - 1


VISION_SCHEMA = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "minimum": 1, "default": 1152},
        "layers": {"type": "integer", "minimum": 1, "default": 27},
        "mlp": {"type": "integer", "minimum": 1, "default": 4304},
        "heads": {"type": "integer", "minimum": 1, "default": 16},
        "patch": {"type": "integer", "minimum": 1, "default": 14},
        "image_size": {"type": "integer", "minimum": 1, "default": 224},
    },
    "additionalProperties": False,
}
TEXT_SCHEMA = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "minimum": 1, "default": 2048},
        "layers": {"type": "integer", "minimum": 1, "default": 18},
        "mlp": {"type": "integer", "minimum": 1, "default": 16384},
        "heads": {"type": "integer", "minimum": 1, "default": 8},
        "kv_heads": {"type": "integer", "minimum": 1, "default": 1},
        "head_dim": {"type": "integer", "minimum": 2, "default": 256},
        "vocab": {"type": "integer", "minimum": 1, "default": 257152},
        "rope_theta": {"type": "number", "exclusiveMinimum": 0, "default": 10000.0},
    },
    "additionalProperties": False,
}


def load_tokenizer(ctx, source: str):
    """The tokenizer at `source` (folder or Hub id); None on meta when it is not on disk (the step then
    only describes itself)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(ctx.resolve_path(source, "tokenizer")))
    except (OSError, ValueError) as e:
        if ctx.meta or parameters_are_placeholders():
            return None
        raise ParamError("tokenizer", f"cannot load a tokenizer from '{source}': {e}") from None


def text_token_ports(wired):
    """step_ports of a backbone whose language step (with `text` wired) makes right-padded tokens."""
    if "text" not in wired:
        return None
    return StepPorts(("text",), {"tokens": OutPort("tokens", doc="[B, L] token ids, right padded"),
                                 "tokens_mask": OutPort("mask", doc="[B, L] True on real tokens")})


def _filled(schema, value):
    out = {k: s["default"] for k, s in schema["properties"].items()}
    out.update(value or {})
    return out


@register
class PaliGemmaPrefix(Block):
    type_name = "backbone.paligemma"
    description = ("PaliGemma as pi0's prefix: SigLIP patches + projector per camera, Gemma embeddings of the "
                   "language tokens, Gemma's decoder with prefix-LM attention; outputs every layer's keys and "
                   "values for an action expert (pi0's KV cache).")
    in_ports = {
        "images": InPort("image", ndim=5, doc="[B, V, 3, H, W] in [0, 1]"),
        "image_mask": InPort("mask", optional=True, ndim=2, doc="[B, V] False: an empty camera (masked out)"),
        "text": InPort("text", optional=True, doc="B instructions: the block's step tokenizes them (with.tokenizer)"),
        "tokens": InPort("tokens", optional=True, ndim=2, doc="[B, L] PaliGemma token ids, instead of text"),
        "tokens_mask": InPort("mask", optional=True, ndim=2, doc="[B, L] True on real tokens (right padding)"),
    }
    out_ports = {
        "kv": OutPort("latent", doc="[B, layers, 2, T, kv_heads * head_dim]: keys (rotary applied) and values"),
        "prefix_mask": OutPort("mask", doc="[B, T] valid prefix tokens"),
    }
    HIDDEN = {"hidden": OutPort("hidden", doc="[B, T, width] the last layer after the final norm (with.hidden)")}
    params_schema = {
        "type": "object",
        "properties": {
            "vision": {**VISION_SCHEMA, "default": {}, "description": "SigLIP sizes (default: so400m/14 at 224)"},
            "text": {**TEXT_SCHEMA, "default": {}, "description": "Gemma sizes (default: Gemma 2B)"},
            "tokenizer": {"type": "string", "default": "none",
                          "description": "PaliGemma's tokenizer (folder or Hub id) for the text step; 'none' with tokens"},
            "max_length": {"type": "integer", "minimum": 1, "default": 48, "description": "tokenizer_max_length"},
            "newline": {"type": "boolean", "default": True,
                        "description": "append a newline to each text before tokenizing (pi0's "
                                       "pi0_new_line_processor); false for pi0.5, whose prompt is complete"},
            "hidden": {"type": "boolean", "default": False,
                       "description": "output `hidden` (the last layer's states after the final norm); pi0 reads only "
                                      "the keys and values, so by default the last layer's attention output and "
                                      "MLP are not computed"},
            "resize": {"type": "boolean", "default": True,
                       "description": "resize with padding to vision.image_size (LeRobot's); false: images "
                                      "must already have that size"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        v = self.vision_cfg = _filled(VISION_SCHEMA, self.params["vision"])
        t = self.text_cfg = _filled(TEXT_SCHEMA, self.params["text"])
        if v["image_size"] % v["patch"]:
            raise ParamError("vision.image_size", f"{v['image_size']} is not a multiple of the patch {v['patch']}")
        if v["width"] % v["heads"]:
            raise ParamError("vision.heads", f"vision width {v['width']} is not divisible by {v['heads']} heads")
        if t["heads"] % t["kv_heads"]:
            raise ParamError("text.kv_heads", f"{t['heads']} heads are not a multiple of {t['kv_heads']} kv heads")
        if ("text" in inputs) == ("tokens" in inputs):
            raise PortError("text", "wire either text (tokenized by the block's step) or tokens (and tokens_mask)")
        self.tokenizer = None
        if "text" in inputs:
            if self.params["tokenizer"] == "none":
                raise ParamError("tokenizer", "text is wired: with.tokenizer must name PaliGemma's tokenizer "
                                              "(a folder or Hub id)")
            self.tokenizer = load_tokenizer(ctx, self.params["tokenizer"])
        img = inputs["images"]
        if img.shape is not None and len(img.shape) == 5 and not self.params["resize"]:
            if tuple(img.shape[-2:]) != (v["image_size"], v["image_size"]):
                raise PortError("images", f"resize is false, so images must be {v['image_size']} x {v['image_size']}, "
                                          f"got {list(img.shape[-2:])}")
        self.vision = SiglipVision(v["width"], v["layers"], v["mlp"], v["heads"], v["patch"], v["image_size"])
        self.projector = nn.Linear(v["width"], t["width"])
        self.embed_tokens = nn.Embedding(t["vocab"], t["width"])
        self.layers = nn.ModuleList(GemmaLayer(t["width"], t["mlp"], t["heads"], t["kv_heads"], t["head_dim"])
                                    for _ in range(t["layers"]))
        self.norm = RMSNorm(t["width"])

    @classmethod
    def ports_for(cls, params):
        if (params or {}).get("hidden"):
            return cls.in_ports, {**cls.out_ports, **cls.HIDDEN}
        return cls.in_ports, cls.out_ports

    def step_ports(self, wired):
        return text_token_ports(wired)

    def processor_step(self, node=None, sources=None):
        if "text" not in self.port_info:
            return None
        return bind(PaliGemmaTokens, self, node, sources, ("text",), ("tokens", "tokens_mask"), self.tokenizer,
                    self.params["max_length"], self.params["newline"])

    def embed(self, images, image_mask, tokens, tokens_mask):
        """(prefix embeddings [B, T, width], valid mask [B, T]): LeRobot's embed_prefix."""
        b, n = images.shape[:2]
        size = self.vision_cfg["image_size"]
        flat = images.reshape(b * n, *images.shape[2:]).float()
        if self.params["resize"]:
            flat = resize_with_pad(flat, size)
        elif tuple(flat.shape[-2:]) != (size, size):
            raise PortError("images", f"expects {size} x {size} images (resize is false), got {list(flat.shape[-2:])}")
        patches = self.projector(self.vision(flat * 2.0 - 1.0))  # [B*V, P, W]
        p = patches.shape[1]
        patches = patches.reshape(b, n * p, -1)
        if image_mask is None:
            img_pad = torch.ones(b, n * p, dtype=torch.bool, device=images.device)
        else:
            img_pad = image_mask.bool()[:, :, None].expand(b, n, p).reshape(b, n * p)
        lang = self.embed_tokens(tokens.long())
        lang = lang * math.sqrt(lang.shape[-1])
        lang_pad = (torch.ones_like(tokens, dtype=torch.bool) if tokens_mask is None else tokens_mask.bool())
        return torch.cat([patches, lang.to(patches.dtype)], dim=1), torch.cat([img_pad, lang_pad], dim=1)

    def meta_forward(self, images, tokens=None, image_mask=None, tokens_mask=None, text=None):
        """Shape probing: with `text` wired the probe holds the raw instructions, so the step's tokens are
        stood in for by [B, max_length] zeros."""
        if tokens is None:
            b = images.shape[0]
            tokens = torch.zeros(b, self.params["max_length"], dtype=torch.long, device=images.device)
            tokens_mask = torch.ones(b, self.params["max_length"], dtype=torch.bool, device=images.device)
        return self.forward(images, tokens, image_mask, tokens_mask)

    def forward(self, images, tokens, image_mask=None, tokens_mask=None):
        x, pad = self.embed(images, image_mask, tokens, tokens_mask)
        t = self.text_cfg
        cos, sin = rope(prefix_positions(pad), t["head_dim"], t["rope_theta"], x.dtype)
        mask = pad[:, None, :] & pad[:, :, None]
        kv = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            kv.append(torch.stack([k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2)], dim=1))
            if i < last or self.params["hidden"]:  # the last layer's output feeds only `hidden`
                x = layer.finish(x, attention(q, k, v, mask, t["head_dim"] ** -0.5))
        out = {"kv": torch.stack(kv, dim=1), "prefix_mask": pad}
        if self.params["hidden"]:
            out["hidden"] = self.norm(x)
        return out
