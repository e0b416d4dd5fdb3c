"""Loading a Hugging Face VLM's processor for image-text use.

Robot policies feed images, never videos. Some transformers builds cannot construct a video
processor (they need torchvision, which we do not install), and the multimodal processors refuse
to build without one. `image_text_processor` builds the model's own processor class with the
video slot removed, from the model's own tokenizer, image processor and chat template, so the
text/image path (chat template, image-token expansion) is exactly the model's.
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path


@functools.lru_cache(maxsize=None)
def without_video(processor_cls):
    """A subclass of a multimodal processor class that takes no video processor."""
    if "video_processor" not in processor_cls.get_attributes():
        return processor_cls

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        processor_cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(processor_cls.__name__, (processor_cls,), {"__init__": __init__, "__module__": processor_cls.__module__})


def image_text_processor(processor_cls, image_processor, tokenizer, chat_template=None, **kwargs):
    """Build `processor_cls` for images and text only."""
    return without_video(processor_cls)(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=chat_template, **kwargs)


def load_processor(directory: Path):
    """The processor saved in `directory`: AutoProcessor when it can build one, else the same
    processor class assembled from the saved tokenizer, image processor and chat template."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return AutoProcessor.from_pretrained(directory)
        except (ImportError, ValueError, TypeError, AttributeError, OSError):
            pass  # e.g. no video processor without torchvision: assemble the image-text one below
        config = _read_json(directory / "processor_config.json")
        name = config.get("processor_class") or _read_json(directory / "preprocessor_config.json").get("processor_class")
        if not name or not hasattr(transformers, name):
            raise ValueError(f"{directory}: cannot tell which processor class to build (no processor_class in "
                             "processor_config.json / preprocessor_config.json)")
        cls = getattr(transformers, name)
        keywords = _init_keywords(cls)
        extra = {k: v for k, v in config.items() if k in keywords}
        if "image_seq_len" in keywords and "image_seq_len" not in extra:
            extra.update(_image_seq_len(directory))
        image_processor = AutoImageProcessor.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        template = config.get("chat_template") or _chat_template(directory) or getattr(tokenizer, "chat_template", None)
        return image_text_processor(cls, image_processor, tokenizer, chat_template=template, **extra)


def _init_keywords(cls) -> set:
    import inspect

    skip = {"self", "image_processor", "tokenizer", "video_processor", "chat_template", "args", "kwargs"}
    return set(inspect.signature(cls.__init__).parameters) - skip


def _image_seq_len(directory: Path) -> dict:
    """Idefics3/SmolVLM: image tokens per image, from the model config when the processor's
    saved settings lack it: (image_size / patch_size)^2 / scale_factor^2."""
    config = _read_json(directory / "config.json")
    vision = config.get("vision_config") or {}
    if not {"image_size", "patch_size"} <= set(vision):
        return {}
    scale = int(config.get("scale_factor", 1))
    return {"image_seq_len": (vision["image_size"] // vision["patch_size"]) ** 2 // (scale * scale)}


def _chat_template(directory: Path):
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    return _read_json(directory / "chat_template.json").get("chat_template")


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path) as f:
        data = json.load(f)
    if isinstance(data.get("processor"), dict):  # some versions nest the processor's own keys
        data = {**data, **data["processor"]}
    return data
