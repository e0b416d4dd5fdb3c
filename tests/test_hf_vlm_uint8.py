"""processors/hf_vlm.pil_uint8: the VLM processor step hands Qwen-VL's PIL image processor the uint8
values it would make of float images itself; the pixel values are the same as handing it the floats
(transformers' own path), on images that are not multiples of 1/255, resized or not, and an image
transformers takes for integers (all 0 or 1) keeps the float path."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from graphvla.processors.hf_processor import load_processor
from graphvla.processors.hf_vlm import encode_cpu, pil_uint8

warnings.filterwarnings("ignore")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "starvla"


def both(processor, images):
    texts = ["pick up the cube"] * images.shape[0]
    fast = pil_uint8(processor, images)
    return encode_cpu(processor, images, texts), encode_cpu(processor, fast, texts), fast


def test_uint8_path_gives_the_float_paths_pixel_values():
    for fixture in ("qwenoft", "qwenoft_qwen25"):
        processor = load_processor(FIXTURES / fixture / "vlm")
        g = torch.Generator().manual_seed(0)
        # 64 x 64 (kept as it is) and 50 x 90 (resized to multiples of 32 / 28 by bilinear PIL resampling)
        for size in ((64, 64), (50, 90)):
            images = torch.rand(2, 2, 3, *size, generator=g)
            ref, ours, fast = both(processor, images)
            assert fast.dtype == torch.uint8, fixture  # the fast path was taken
            assert set(ref) == set(ours)
            for key in ref:
                assert torch.equal(ref[key], ours[key]), (fixture, size, key)
        # uint8 values / 255, as a camera gives them: exact too
        images = torch.randint(0, 256, (2, 2, 3, 64, 64), generator=g).float() / 255
        ref, ours, _ = both(processor, images)
        assert torch.equal(ref["pixel_values"], ours["pixel_values"])
        # the comparison can fail: one pixel inverted changes the pixel values
        moved = pil_uint8(processor, images).clone()
        moved[0, 0, 0, 5, 5] = 255 - moved[0, 0, 0, 5, 5]
        other = encode_cpu(processor, moved, ["pick up the cube"] * 2)
        assert not torch.equal(ref["pixel_values"], other["pixel_values"])


def test_images_transformers_takes_for_integers_keep_the_float_path():
    processor = load_processor(FIXTURES / "qwenoft" / "vlm")
    images = torch.rand(2, 2, 3, 50, 90)
    images[1, 0] = (images[1, 0] > 0.5).float()  # every value 0 or 1: transformers does not rescale it
    assert pil_uint8(processor, images) is images
    processor.image_processor.do_resize = False  # without PIL's resize the floats are never truncated
    try:
        assert pil_uint8(processor, torch.rand(1, 2, 3, 64, 64)).dtype == torch.float32
    finally:
        processor.image_processor.do_resize = True
