"""Samples for the tiny Qwen3-VL graphs' ports (graphvla/graphs/tiny/base/qwen3vl.yaml: 1 view of
128 x 128, state 4, actions 8 x 4) and their DataBundle, for trainer tests of the VLM graphs."""
import torch

from graphvla.data.api import DataBundle
from graphvla.data.stats import compute_stats

TASKS = ["reach the goal", "push the puck"]


class VLMSamples(torch.utils.data.Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, 3, 128, 128, generator=g)
        self.state = torch.randn(n, 4, generator=g)
        self.actions = torch.tanh(torch.randn(n, 8, 4, generator=g))

    def __len__(self):
        return len(self.state)

    def __getitem__(self, i):
        return {"images": self.images[i], "instruction": TASKS[i % 2], "state": self.state[i],
                "actions": self.actions[i], "actions_mask": torch.ones(8, dtype=torch.bool)}


def vlm_bundle(ds) -> DataBundle:
    stats = {p: compute_stats(torch.stack([ds[i][p] for i in range(len(ds))]).reshape(-1, 4).double().numpy())
             for p in ("state", "actions")}
    return DataBundle({"action": ds}, stats)


def through_step(block, method="forward", **ports):
    """Call a block as the compiled graphs do: its processor step on the raw ports it reads (by
    name), then forward (or predict) on what the step makes and the other ports."""
    reads = set(block.step_ports(frozenset(ports)).reads)
    step = block.processor_step(block.block_id, {p: p for p in ports if p in reads})
    made = step.run(**{p: v for p, v in ports.items() if p in reads})
    return getattr(block, method)(**made, **{p: v for p, v in ports.items() if p not in reads})
