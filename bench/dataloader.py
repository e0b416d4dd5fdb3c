"""Data-loader throughput: samples/s of the LeRobot folder reader and of webdataset shards,
as ratios against reading the same samples naively (open the episode's parquet and decode the
PNG for every sample, then build the same chunk), all measured in this run.

    python bench/dataloader.py                         # records a small Meta-World set first
    python bench/dataloader.py --data DIR --samples 2000 --batch 32 --workers 0

Prints one line per reader: samples/s and the ratio to the naive baseline."""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SPEC = """\
graphvla: 1
name: bench-data
inputs:
  images:       {kind: image, views: 1, size: [SIZE, SIZE]}
  instruction:  {kind: text}
  state:        {kind: state, dim: 4}
  actions:      {kind: action, dim: 4, horizon: 8, train_only: true}
  actions_mask: {kind: mask, shape: [8], train_only: true, optional: true}
blocks:
  vision: {type: encoder.image, in: {images: inputs.images}, with: {width: 32, patch: 16}}
  language: {type: encoder.text, in: {text: inputs.instruction}, with: {width: 32}}
  fuse: {type: glue.fuse, in: {a: vision.hidden, b: language.pooled, c: inputs.state}, with: {width: 32}}
  head: {type: head.mlp, in: {context: fuse.hidden, target: inputs.actions}, with: {hidden: 32}}
losses:
  action: {from: head.loss}
outputs:
  actions: head.actions
"""


class NaiveDataset(torch.utils.data.Dataset):
    """What one writes without a data layer: per sample, read the episode's parquet file with
    pandas, decode the PNG, slice the action chunk."""

    def __init__(self, root: Path, horizon: int = 8):
        import json

        self.root, self.h = root, horizon
        self.index = []
        for line in (root / "meta" / "episodes.jsonl").read_text().splitlines():
            e = json.loads(line)
            self.index += [(e["episode_index"], t) for t in range(e["length"])]
        self.tasks = {json.loads(x)["task_index"]: json.loads(x)["task"] for x in (root / "meta" / "tasks.jsonl").read_text().splitlines()}

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        import pandas as pd
        from PIL import Image

        from graphvla.data.images import image_array

        ep, t = self.index[i]
        df = pd.read_parquet(self.root / f"data/chunk-{ep // 1000:03d}/episode_{ep:06d}.parquet")
        row = df.iloc[t]
        cell = row["observation.images.corner"]  # embedded PNG bytes (older recordings: a file path)
        src = io.BytesIO(cell["bytes"]) if cell.get("bytes") else self.root / cell["path"]
        img = np.asarray(Image.open(src).convert("RGB"))
        acts = np.stack(df["action"].iloc[t: t + self.h].map(np.asarray))
        mask = np.zeros(self.h, bool)
        mask[: len(acts)] = True
        acts = np.concatenate([acts, np.repeat(acts[-1:], self.h - len(acts), 0)])
        # same pixel conversion as the data layer, so the ratio measures data access only
        return {"images": torch.from_numpy(image_array(img, img.shape[:2])[None]),
                "instruction": self.tasks[int(row["task_index"])],
                "state": torch.tensor(np.asarray(row["observation.state"], dtype=np.float32)),
                "actions": torch.from_numpy(acts.astype(np.float32)), "actions_mask": torch.from_numpy(mask)}


def throughput(ds, indices, batch, workers, collate) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=indices, num_workers=workers, collate_fn=collate)
    t = time.perf_counter()
    n = 0
    for b in loader:
        n += len(b["instruction"])
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a LeRobot v2.1 folder with PNG frames (default: record 2 tasks x 3 episodes)")
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--size", type=int, default=128, help="image side when recording")
    args = ap.parse_args()

    from graphvla.data.api import collate, load_data, open_source
    from graphvla.data.shards import pack
    from graphvla.spec.loader import load_spec

    tmp = Path(tempfile.mkdtemp(prefix="graphvla-bench-"))
    if args.data:
        root = Path(args.data)
    else:
        from graphvla.data.metaworld_record import tiny_metaworld

        root = tiny_metaworld(tmp, episodes=3, size=args.size)
    size = open_source(root).features["observation.images.corner"]["shape"][0]
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(SPEC.replace("SIZE", str(size)))
    spec = load_spec(spec_path)
    pack(open_source(root), tmp / "shards")

    folder = load_data(root, spec).streams["action"]
    shards = load_data(tmp / "shards", spec).streams["action"]
    naive = NaiveDataset(root)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(folder), args.samples).tolist()
    for ds in (folder, shards, naive):  # warm the page cache and lazy imports equally
        throughput(ds, idx[:64], args.batch, 0, collate)
    base = throughput(naive, idx, args.batch, args.workers, collate)
    rows = [("naive parquet+PNG per sample", base),
            ("LeRobot folder (graphvla.data)", throughput(folder, idx, args.batch, args.workers, collate)),
            ("webdataset shards (graphvla.data)", throughput(shards, idx, args.batch, args.workers, collate))]
    print(f"{len(folder)} frames of {size}x{size}, {args.samples} random samples, batch {args.batch}, workers {args.workers}")
    for name, sps in rows:
        print(f"{name:36s} {sps:9.1f} samples/s   x{sps / base:.2f} vs naive")


if __name__ == "__main__":
    main()
