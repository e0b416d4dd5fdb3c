"""What `graphvla export` (runners/export.py) does for a backbone.hf_vlm block: `vlm_exports(cg)`.

Its processor (chat template, tokenization, image resizing and patching) is the block's processor
step (processors/hf_vlm.py VLMProcessor), a Python step of the preprocess pipeline: export saves it
with its files in the folder and the server (runners/exported.py) runs it before the graph, as
Policy runs it before the inference graph. The graph takes what the step makes, named after the
block: `BLOCK.pixel_values` [batch, views x patches, features] (float32), `BLOCK.input_ids` and
`BLOCK.attention_mask` [batch, tokens] (int64, right-padded; the token axis is dynamic); the step's
other tensors (`image_grid_thw`, `mm_token_type_ids`) are fixed by the graph's declared image size
and not taken. The block's model runs as blocks/backbones/hf_vlm_export.TensorQwen3VL.

`refusal(cg, bid)` says why a block cannot be exported this way: another model family than
Qwen3-VL, action tokens (FAST through the VLM decodes autoregressively), flash attention (its
vision path needs the packed cu_seqlens), no processor, or images that are not a graph input.
`onnx_refusal` adds what only ONNX cannot take: weights in another dtype than float32
(onnxruntime's CPU Conv has no bfloat16 kernel)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..blocks.backbones.hf_vlm_export import EXPORTABLE_MODEL_TYPES, StaticGrid, TensorQwen3VL, static_grid
from ..compiler import dag as D
from ..policy.observation import expected_shape

VLM_TYPE = "backbone.hf_vlm"
FIELDS = ("pixel_values", "input_ids", "attention_mask")  # the step's tensors the traced model takes


def _ports(cg, bid) -> dict:
    """{block port: graph input} of the block's images and text."""
    return {port: src[len(D.INPUT_PREFIX):] for port, src, _, _ in cg.in_edges(bid)
            if port in ("images", "text") and src.startswith(D.INPUT_PREFIX)}


def refusal(cg, bid) -> str | None:
    """Why the backbone.hf_vlm `bid` cannot be exported, or None (module docstring)."""
    block = cg.model[cg.block(bid).owner]
    p = block.params
    if p.get("action_vocab") is not None:
        return ("with.action_vocab: it decodes action tokens autoregressively (transformers' generate, a "
                "data-dependent loop until the end token)")
    if p.get("action_placeholders") is not None:
        return ("with.action_placeholders: the exported Qwen3-VL path (blocks/backbones/hf_vlm_export.py) makes "
                "hidden, layers and mask, not the placeholder states (action_hidden); not exportable yet")
    model_type = getattr(block.config, "model_type", None)
    if model_type not in EXPORTABLE_MODEL_TYPES:
        return (f"its model is {model_type!r}; only Qwen3-VL ({', '.join(EXPORTABLE_MODEL_TYPES)}) has a traceable "
                "path (blocks/backbones/hf_vlm_export.py): the other families' vision towers split and merge image "
                "features by data-dependent lengths and masks")
    attn = str(getattr(block.model.config, "_attn_implementation", "") or "")
    if attn.startswith("flash"):
        return f"with.attn_implementation={attn}: its vision attention needs the packed cu_seqlens of every call"
    if block.processor is None:
        return "it has no processor on disk to save beside the graph"
    if "images" not in _ports(cg, bid):
        return ("its 'images' come from another block; an exported VLM's processor runs before the graph, on "
                "graph inputs")
    return None


def onnx_refusal(cg, bid) -> str | None:
    """Why the block cannot go through --format onnx though torch-export takes it, or None."""
    dtype = cg.model[cg.block(bid).owner].params["dtype"]
    if dtype != "float32":
        return (f"--format onnx: with.dtype={dtype}: onnxruntime's CPU kernels have no {dtype} Conv (the vision "
                "patch embedding); export --format torch-export, or a float32 run")
    return None


class TensorVLM(nn.Module):
    """The block's predict on its processor step's tensors ({BLOCK}_pixel_values, _input_ids,
    _attention_mask; the rest is fixed by the static grid and ignored)."""

    def __init__(self, bid: str, tensors: TensorQwen3VL):
        super().__init__()
        self.block_id, self.tensors = bid, tensors

    def predict(self, pixel_values, input_ids, attention_mask, **fixed):
        return self.tensors(pixel_values, input_ids, attention_mask)


@dataclass
class VLMExport:
    """One exportable backbone.hf_vlm: its static grid and traceable forward."""
    bid: str
    block: nn.Module
    grid: StaticGrid

    def keys(self) -> list[str]:
        """The batch keys of the step's tensors the exported graph takes."""
        return [f"{self.bid}.{f}" for f in FIELDS]

    @property
    def max_tokens(self) -> int:
        return int(self.block.config.get_text_config().max_position_embeddings)

    def module(self) -> TensorVLM:
        return TensorVLM(self.bid, TensorQwen3VL(self.block, self.grid).eval())


def vlm_exports(cg) -> dict[str, VLMExport]:
    """{block id: VLMExport} of the graph's inference backbone.hf_vlm blocks; each must have
    passed refusal() (check_blocks calls it first)."""
    out = {}
    for bid in cg.infer_block_ids():
        if cg.block(bid).type_name != VLM_TYPE:
            continue
        shape = tuple(int(x) for x in expected_shape(cg.spec.inputs[_ports(cg, bid)["images"]]))
        out[bid] = VLMExport(bid, cg.model[cg.block(bid).owner], static_grid(cg.model[cg.block(bid).owner], shape[0],
                                                                              shape[2], shape[3]))
    return out
