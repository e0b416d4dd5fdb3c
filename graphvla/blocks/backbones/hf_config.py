"""Where a Hugging Face VLM comes from: a local checkpoint folder, a config (a dict or one bundled
with the package under graphvla/configs/), or a tiny model built offline. Also: the number of tokens an
image becomes, computed from the image processor's settings (no tokenizer needed), for shape
probing of full-size graphs whose weights and tokenizer are not on disk.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def bundled_configs() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.iterdir() if (p / "config.json").exists())


def bundled_dir(name: str) -> Path:
    d = CONFIG_DIR / name
    if not (d / "config.json").exists():
        from ...errors import did_you_mean

        known = bundled_configs()
        hint = did_you_mean(name, known) or ("bundled: " + ", ".join(known))
        raise ValueError(f"no bundled config '{name}' ({hint})")
    return d


def make_config(source):
    """A transformers config from a dict (with model_type), a bundled name or a folder."""
    from transformers import AutoConfig

    if isinstance(source, dict):
        data = dict(source)
        model_type = data.pop("model_type", None)
        if not model_type:
            raise ValueError("a config dict needs 'model_type' (e.g. qwen3_vl, qwen2_5_vl, smolvlm)")
        return AutoConfig.for_model(model_type, **data)
    folder = source if isinstance(source, Path) else bundled_dir(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoConfig.from_pretrained(folder)


def image_processor_settings(folder: Path) -> dict:
    path = folder / "preprocessor_config.json"
    if not path.exists():
        return {}
    with open(path) as f:
        return json.load(f)


def tokens_per_image(settings: dict, config, height: int, width: int) -> int:
    """Merged vision tokens one image of height x width becomes, from the processor settings
    (Qwen-style dynamic resolution) or the vision config (fixed-size encoders)."""
    vision = getattr(config, "vision_config", None)
    patch = settings.get("patch_size") or getattr(vision, "patch_size", 14)
    merge = settings.get("merge_size") or getattr(vision, "spatial_merge_size", 1)
    if "merge_size" in settings or hasattr(vision, "spatial_merge_size"):
        size = settings.get("size") or {}
        min_pixels = settings.get("min_pixels") or size.get("shortest_edge") or 56 * 56
        max_pixels = settings.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280
        h, w = smart_resize(height, width, patch * merge, min_pixels, max_pixels)
        return (h // patch) * (w // patch) // (merge * merge)
    image_size = getattr(vision, "image_size", height)
    scale = getattr(config, "scale_factor", 1)
    return (image_size // patch) ** 2 // (scale * scale)


def smart_resize(height, width, factor, min_pixels, max_pixels):
    """Qwen-VL's resize rule: both sides multiples of `factor`, area within [min, max] pixels."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w
