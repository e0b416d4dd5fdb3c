"""The starVLA fixtures' samples as a training dataset, for the tests that train from starVLA's weights."""
from __future__ import annotations

import torch


class FixtureSamples(torch.utils.data.Dataset):
    """A fixture's examples (case.json `meta`, its tensors `data`), repeated to `n` samples: images
    [V, 3, H, W] in [0, 1], instruction, actions, and an all-true actions_mask when `mask`."""

    def __init__(self, meta: dict, data: dict, n: int = 4, mask: bool = True):
        self.meta, self.data = meta, data
        self.images = data["images"].permute(0, 1, 4, 2, 3).float() / 255
        self.n, self.mask = n, mask

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        j = i % len(self.meta["instructions"])
        sample = {"images": self.images[j], "instruction": self.meta["instructions"][j], "actions": self.data["actions"][j]}
        if self.mask:
            sample["actions_mask"] = torch.ones(self.meta["horizon"], dtype=torch.bool)
        return sample
