"""Run by test_train_ddp.py under `accelerate launch --num_processes 2 --cpu`: trains the tiny
graph on synthetic data for a few steps; each rank saves its weights and the indices it saw."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_doubles import TINY_SPEC, SyntheticActions, port_stats  # noqa: E402

from graphvla.data.api import DataBundle, collate  # noqa: E402
from graphvla.data.normalize import Normalizer  # noqa: E402
from graphvla.runners.train import Trainer  # noqa: E402
from graphvla.spec.loader import load_spec  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
spec = load_spec(TINY_SPEC, ["trainer.max_steps=6", "trainer.save_every=100", "trainer.warmup_steps=1",
                             "trainer.batch_size=16"] + sys.argv[2:])  # global: 8 per process


class Recorded(SyntheticActions):
    """SyntheticActions that remembers which samples this process loaded (num_workers is 0)."""

    def __getitem__(self, i):
        self.loaded.append(int(i))
        return super().__getitem__(i)


ds = Recorded(48)
ds.loaded = []
stats = port_stats(ds, ["state", "actions"])
ds.loaded = []  # the statistics read every sample; count only what training draws
norm = Normalizer(stats, spec.section("trainer")["normalization"])
trainer = Trainer.from_spec(spec, DataBundle({"action": ds}, stats), out / "run", normalizer=norm, collate=collate, progress=False)
rank = trainer.accelerator.process_index
initial = {k: v.clone() for k, v in trainer.cg.model.state_dict().items()}
result = trainer.run()
torch.save({"rank": rank, "world": trainer.accelerator.num_processes, "initial": initial,
            "final": trainer.cg.model.state_dict(), "losses": [r["loss"] for r in result.history],
            "loaded": ds.loaded, "shard": (trainer.feeds["action"].sampler.rank, trainer.feeds["action"].sampler.world_size)}, out / f"rank{rank}.pt")
