"""What `graphvla export` (runners/export.py) does for a backbone.hf_vlm block: `vlm_exports(cg)`.

Its processor (chat template, tokenization, image resizing and patching) is Python, so it stays
out of the graph: the graph takes what the processor makes, as three inputs named after the block,
`BLOCK.pixel_values` [batch, views x patches, features] (float32), `BLOCK.input_ids` and
`BLOCK.attention_mask` [batch, tokens] (int64, right-padded; the token axis is dynamic). The
processor's files are saved in the export folder (`processor-BLOCK/`, loaded back with
from_pretrained on that folder and checked to make the same tensors) and named in the manifest's
`processors` section, which the server (runners/exported.py) runs before the graph. The block's
model runs as blocks/backbones/hf_vlm_export.TensorQwen3VL: the image grid is fixed by the
graph's declared image size.

`refusal(cg, bid)` says why a block cannot be exported this way: another model family than
Qwen3-VL, action tokens (FAST through the VLM decodes autoregressively), flash attention (its
vision path needs the packed cu_seqlens), or image/text inputs that are not graph inputs of its
own (the processor's outputs replace them). `onnx_refusal` adds what only ONNX cannot take: weights
in another dtype than float32 (onnxruntime's CPU Conv has no bfloat16 kernel)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..blocks.backbones.hf_processor import load_processor
from ..blocks.backbones.hf_vlm_export import (
    EXPORTABLE_MODEL_TYPES,
    StaticGrid,
    TensorQwen3VL,
    processor_tensors,
    static_grid,
)
from ..compiler import dag as D
from ..policy.observation import expected_shape

VLM_TYPE = "backbone.hf_vlm"
FIELDS = ("pixel_values", "input_ids", "attention_mask")  # the graph inputs a processor makes, in order


def _ports(cg, bid) -> dict:
    """{block port: graph input} of the block's images and text."""
    return {port: src[len(D.INPUT_PREFIX):] for port, src, _, _ in cg.in_edges(bid)
            if port in ("images", "text") and src.startswith(D.INPUT_PREFIX)}


def refusal(cg, bid) -> str | None:
    """Why the backbone.hf_vlm `bid` cannot be exported, or None (module docstring)."""
    block = cg.model[bid]
    p = block.params
    if p.get("action_vocab") is not None:
        return ("with.action_vocab: it decodes action tokens autoregressively (transformers' generate, a "
                "data-dependent loop until the end token)")
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
    ports = _ports(cg, bid)
    for port in ("images", "text"):
        if port not in ports:
            return (f"its '{port}' comes from another block; an exported VLM takes its processor's tensors, made "
                    "from graph inputs")
    for port, name in ports.items():
        others = sorted({b for b in cg.input_consumers(name) if b != bid})
        if others:
            return (f"the input '{name}' also feeds {', '.join(others)}; in an exported graph it is replaced by the "
                    "processor's tensors, which only this block takes")
    return None


def onnx_refusal(cg, bid) -> str | None:
    """Why the block cannot go through --format onnx though torch-export takes it, or None."""
    dtype = cg.model[bid].params["dtype"]
    if dtype != "float32":
        return (f"--format onnx: with.dtype={dtype}: onnxruntime's CPU kernels have no {dtype} Conv (the vision "
                "patch embedding); export --format torch-export, or a float32 run")
    return None


class ProcessorInputVLM(nn.Module):
    """The block's predict on its processor's tensors: the graph's `images` argument carries
    {pixel_values} and its `text` argument {input_ids, attention_mask} (FoldedPolicy packs them)."""

    def __init__(self, bid: str, tensors: TensorQwen3VL):
        super().__init__()
        self.block_id, self.tensors = bid, tensors

    def predict(self, images, text):
        return self.tensors(images["pixel_values"], text["input_ids"], text["attention_mask"])


@dataclass
class VLMExport:
    """One exportable backbone.hf_vlm: its graph inputs, static grid and traceable forward."""
    bid: str
    block: nn.Module
    images: str  # graph input of its images
    text: str  # graph input of its instruction
    grid: StaticGrid
    image_shape: tuple  # [V, C, H, W] of one observation

    @property
    def files(self) -> str:
        return f"processor-{self.bid}"

    def names(self) -> dict:
        """{field: graph input name}."""
        return {f: f"{self.bid}.{f}" for f in FIELDS}

    def parts(self, port: str) -> dict:
        """{field: graph input name} of the inputs that stand for the graph input `port`."""
        fields = ["pixel_values"] if port == self.images else ["input_ids", "attention_mask"]
        return {f: self.names()[f] for f in fields}

    @property
    def image_token_id(self) -> int:
        return int(self.block.model.config.image_token_id)

    @property
    def max_tokens(self) -> int:
        return int(self.block.config.get_text_config().max_position_embeddings)

    def module(self) -> ProcessorInputVLM:
        return ProcessorInputVLM(self.bid, TensorQwen3VL(self.block, self.grid).eval())

    def tensors(self, processor, images: torch.Tensor, texts: list) -> dict:
        return processor_tensors(processor, images, texts, self.grid)

    def example(self, texts: list) -> tuple[torch.Tensor, list]:
        """(images [len(texts), V, 3, H, W] in [0, 1], texts): inputs to trace with and to check the saved processor."""
        g = torch.Generator().manual_seed(0)
        return torch.rand(len(texts), *self.image_shape, generator=g), list(texts)

    def described(self, example: dict) -> dict:
        """{field: the manifest's description of that graph input}."""
        n = self.names()
        common = {"processor": self.bid}
        return {
            "pixel_values": {"name": n["pixel_values"], "port": self.images, "kind": "image_patches", "dtype": "float32",
                             "shape": ["batch", *example["pixel_values"].shape[1:]], **common},
            "input_ids": {"name": n["input_ids"], "port": self.text, "kind": "text", "dtype": "int64",
                          "shape": ["batch", "tokens"], "tokenizer": self.text, **common},
            "attention_mask": {"name": n["attention_mask"], "port": self.text, "kind": "text_mask", "dtype": "int64",
                               "shape": ["batch", "tokens"], **common},
        }

    def tokenizer(self) -> dict:
        return {"tokenizer": "processor", "processor": self.bid, "max_length": self.max_tokens, "blocks": [self.bid]}

    def manifest(self) -> dict:
        g = self.grid
        return {"files": self.files, "class": type(self.block.processor).__name__, "images": self.images,
                "text": self.text, "views": g.views, "image_grid_thw": [g.t, g.h, g.w], "merge_size": g.merge,
                "image_tokens": g.views * g.tokens, "image_token_id": self.image_token_id,
                "max_tokens": self.max_tokens, "inputs": list(self.names().values())}

    def save(self, folder: Path, texts: list) -> None:
        """Write the processor's files to folder/files and check that they load back (from that
        folder only) into a processor that makes the very tensors the block's processor makes."""
        images, texts = self.example(texts)
        target = folder / self.files
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.block.processor.save_pretrained(str(target))
        loaded = load_processor(target)
        want, got = self.tensors(self.block.processor, images, texts), self.tensors(loaded, images, texts)
        for field in FIELDS:
            if want[field].shape != got[field].shape or not torch.equal(want[field], got[field]):
                raise ValueError(f"block '{self.bid}': the processor saved to {target.name}/ does not load back into "
                                 f"one that makes the same {field}")


def vlm_exports(cg) -> dict[str, VLMExport]:
    """{block id: VLMExport} of the graph's inference backbone.hf_vlm blocks; each must have
    passed refusal() (check_blocks calls it first)."""
    out = {}
    for bid in cg.infer_block_ids():
        if cg.block(bid).type_name != VLM_TYPE:
            continue
        ports = _ports(cg, bid)
        shape = tuple(int(x) for x in expected_shape(cg.spec.inputs[ports["images"]]))
        grid = static_grid(cg.model[bid], shape[0], shape[2], shape[3])
        out[bid] = VLMExport(bid, cg.model[bid], ports["images"], ports["text"], grid, shape)
    return out


class SavedProcessor:
    """The reading side (runners/exported.py): a processor saved by VLMExport.save, loaded from
    the export folder only, turning a batch of observation values into its graph inputs."""

    def __init__(self, folder: Path, bid: str, about: dict):
        where = folder / str(about.get("files"))
        if not (where / "tokenizer_config.json").is_file():
            raise FileNotFoundError(f"{folder}: processors.{bid}.files: no processor in {where.name}/ "
                                    "(graphvla export writes it beside the graph)")
        self.bid, self.about = bid, about
        self.processor = load_processor(where)
        t, h, w = (int(x) for x in about["image_grid_thw"])
        self.grid = StaticGrid(int(about["views"]), t, h, w, int(about["merge_size"]))

    def __call__(self, values: dict) -> dict:
        """{port: converted values of the batch} -> {graph input name: tensor}."""
        a = self.about
        made = processor_tensors(self.processor, torch.stack(values[a["images"]]), values[a["text"]], self.grid)
        length = made["input_ids"].shape[1]
        if length > int(a["max_tokens"]):
            raise ValueError(f"'{a['text']}': the prompt is {length} tokens long; block '{self.bid}' takes at most "
                             f"{a['max_tokens']}")
        return dict(zip(a["inputs"], (made[f] for f in FIELDS)))
