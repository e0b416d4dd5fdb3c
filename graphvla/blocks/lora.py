"""LoRA adapters on a block through `peft`: `train: {lora: {r, alpha, dropout, target_modules}}`.

The compiler (compiler/build.py) calls `apply_lora` on every block whose spec asks for it, right
after the block is built (on meta for compile, for real for training and serving), so training,
`graphvla compile`'s parameter counts and `load_policy` all see the same modules. peft injects
its LoRA layers in place (`inject_adapter_in_model`) and freezes every other parameter of the
block. Only `r` is required:

- `alpha` defaults to 2 * r (the update is scaled by alpha / r = 2);
- `dropout` (on the adapter's input) defaults to 0.05;
- `target_modules` defaults to the block type's entry in BLOCK_TARGETS (or its `lora_targets`)
  when the block has such modules (backbone.hf_vlm: the attention and MLP projections of the
  language model, q/k/v/o_proj and gate/up/down_proj),
  else every nn.Linear of the block (those inside nn.MultiheadAttention excepted: it reads their
  weights directly, so an adapter there would be skipped). A list names module suffixes, a string
  is a regular expression on full module names (peft's rules).

A block that adds token embeddings (backbone.hf_vlm with `action_vocab`) keeps its input and
output embeddings trainable: the new action tokens start from scratch and no adapter reaches them.

Serving merges the adapters: a LoRA block merges them into the base weights when it is put in
eval mode (Policy does) and unmerges them in train mode (the trainer sets it before every step),
so inference costs what the base model costs and a live trainer's graph can still be served in
between. Each merge/unmerge round trip of a live trainer rounds the base weights by at most an
ulp; a checkpoint is always written unmerged (the trainer saves right after a train step).

The checkpoint's model.safetensors holds the base weights and the adapters under peft's names
(`<module>.base_layer.weight`, `<module>.lora_A.default.weight`, ...), and its spec.yaml the
`train.lora` section that rebuilds the same modules; `save_adapters` also writes the adapters
alone (adapters.safetensors) with lora.json describing them."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

ADAPTER = "default"
DEFAULT_DROPOUT = 0.05
ADAPTERS_FILE = "adapters.safetensors"
DESCRIPTION_FILE = "lora.json"


# Default targets of block types whose nn.Linear modules are not all worth adapting.
BLOCK_TARGETS = {
    # the language model's attention and MLP projections (Qwen2.5-VL's vision MLP shares the MLP names)
    "backbone.hf_vlm": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


class LoraSpecError(ValueError):
    """A `train.lora` value that does not fit the block; `key` names the field."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def lora_settings(opts: dict) -> dict:
    """`train.lora` with its defaults filled in."""
    r = int(opts["r"])
    return {"r": r, "alpha": float(opts.get("alpha", 2 * r)), "dropout": float(opts.get("dropout", DEFAULT_DROPOUT)),
            "target_modules": opts.get("target_modules")}


def default_targets(block: nn.Module) -> list[str]:
    """The block's `lora_targets` present in it, else the full names of its nn.Linear modules
    (not those nn.MultiheadAttention owns)."""
    named = dict(block.named_modules())
    wanted = getattr(block, "lora_targets", None) or BLOCK_TARGETS.get(getattr(block, "type_name", ""))
    if wanted:
        present = sorted({w for w in wanted for name in named if name == w or name.endswith("." + w)})
        if present:
            return present
    inside_mha = {f"{name}.{child}" if name else child
                  for name, m in named.items() if isinstance(m, nn.MultiheadAttention) for child, _ in m.named_children()}
    return [name for name, m in named.items() if isinstance(m, nn.Linear) and name and name not in inside_mha]


def apply_lora(block: nn.Module, opts: dict, train: dict) -> list[str]:
    """Inject LoRA adapters into `block` as `opts` (its spec's train.lora) asks; returns the names
    of the adapted modules. Raises LoraSpecError naming the field."""
    if train.get("freeze"):
        raise LoraSpecError("freeze", "train.freeze and train.lora exclude each other: a frozen block trains "
                                      "nothing, adapters included (remove one of them)")
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise LoraSpecError("r", "LoRA needs the peft package: pip install peft") from None
    s = lora_settings(opts)
    targets = s["target_modules"] if s["target_modules"] is not None else default_targets(block)
    if not targets:
        raise LoraSpecError("target_modules", f"{type(block).__name__} has no nn.Linear module to adapt; "
                                              "name its modules in train.lora.target_modules")
    config = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"], target_modules=targets)
    try:
        inject_adapter_in_model(config, block, adapter_name=ADAPTER)
    except ValueError as e:  # peft: NoMatchingPeftModuleError, or a module type it cannot adapt
        linear = default_targets(block)[:8]
        raise LoraSpecError("target_modules", f"{e} (target_modules: {targets}; modules of this block that can "
                                              f"take an adapter, e.g.: {linear})") from None
    for module in token_embeddings(block):
        module.requires_grad_(True)
    _merge_on_eval(block)
    adapted = [name for name, m in block.named_modules() if _is_lora_layer(m)]
    block.lora_settings = {**s, "target_modules": targets}
    block.lora_modules = adapted
    return adapted


def token_embeddings(block: nn.Module) -> list[nn.Module]:
    """The embeddings a block that adds tokens (hf_vlm action_vocab) must keep training."""
    if getattr(block, "action_base", None) is None or not hasattr(block, "model"):
        return []
    model = block.model
    out = [model.get_input_embeddings()]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head is not out[0]:
        out.append(head.base_layer if hasattr(head, "base_layer") else head)
    return out


def _is_lora_layer(m) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(m, LoraLayer)


def lora_layers(block: nn.Module) -> list:
    return [m for m in block.modules() if _is_lora_layer(m)]


def _merge_on_eval(block: nn.Module) -> None:
    """Make block.train(False) merge the adapters and block.train(True) unmerge them. nn.Module's
    train() recurses through `child.train(mode)`, so the instance attribute is what a parent's
    eval() calls too."""
    original = block.train

    def train(mode: bool = True):
        result = original(mode)
        with torch.no_grad():
            for layer in lora_layers(block):
                if mode and layer.merged:
                    layer.unmerge()
                elif not mode and not layer.merged and _real(layer):
                    layer.merge()
        return result

    block.train = train


def _real(layer) -> bool:
    return all(p.device.type != "meta" for p in layer.parameters())


def is_merged(block: nn.Module) -> bool:
    layers = lora_layers(block)
    return bool(layers) and all(layer.merged for layer in layers)


def _numel(p) -> int:
    return getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 leaves each process an empty placeholder


def describe(blocks: nn.ModuleDict) -> list[str]:
    """Lines for the start of a run: trainable and total parameters, and each block's adapters."""
    total = sum(_numel(p) for p in blocks.parameters())
    trainable = sum(_numel(p) for p in blocks.parameters() if p.requires_grad)
    lines = [f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)"]
    for bid, block in blocks.items():
        modules = getattr(block, "lora_modules", None)
        if not modules:
            continue
        s = block.lora_settings
        n = sum(_numel(p) for name, p in block.named_parameters() if "lora_" in name)
        kinds = sorted({m.rsplit(".", 1)[-1] for m in modules})
        lines.append(f"LoRA adapters on {bid}: r={s['r']}, alpha={s['alpha']:g}, dropout={s['dropout']:g}, "
                     f"{len(modules)} modules ({', '.join(kinds)}), {n:,} parameters")
    return lines


def save_adapters(blocks: nn.ModuleDict, folder: Path) -> bool:
    """Write the adapters alone (adapters.safetensors, keys as in model.safetensors) and lora.json
    (per block: its settings and adapted modules). Nothing when no block has adapters."""
    from safetensors.torch import save_file

    tensors, described = {}, {}
    for bid, block in blocks.items():
        if not getattr(block, "lora_modules", None):
            continue
        for name, p in block.named_parameters():
            if "lora_" in name:
                tensors[f"{bid}.{name}"] = p.detach().contiguous().cpu()
        described[bid] = {"settings": block.lora_settings, "modules": block.lora_modules, "merged": is_merged(block)}
    if not described:
        return False
    save_file(tensors, str(Path(folder) / ADAPTERS_FILE))
    (Path(folder) / DESCRIPTION_FILE).write_text(json.dumps(described, indent=2) + "\n")
    return True
