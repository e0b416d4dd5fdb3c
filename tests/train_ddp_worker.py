"""Run by test_train_ddp.py under `accelerate launch --num_processes 2 --cpu`: trains the tiny
graph on synthetic data for a few steps; each rank saves its weights and the indices it saw."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_doubles import (TINY_SPEC, DataBundleDouble, NormalizerDouble, SyntheticActions, collate,  # noqa: E402
                           compute_stats, real_data_layer)

from graphvla.runners.train import Trainer  # noqa: E402
from graphvla.spec.loader import load_spec  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
spec = load_spec(TINY_SPEC, ["trainer.max_steps=6", "trainer.save_every=100", "trainer.warmup_steps=1"])
ds = SyntheticActions(48)
stats = compute_stats(ds, ["state", "actions"])
real = real_data_layer()
if real:  # the data layer's bundle, sampler, normalizer and collate
    from graphvla.data.api import DataBundle

    bundle, norm_cls, coll = DataBundle({"action": ds}, stats), real[0], real[1]
else:
    bundle, norm_cls, coll = DataBundleDouble({"action": ds}, stats), NormalizerDouble, collate
norm = norm_cls(stats, spec.section("trainer")["normalization"])
trainer = Trainer(spec, bundle, out / "run", normalizer=norm, collate=coll, progress=False)
rank = trainer.accelerator.process_index
initial = {k: v.clone() for k, v in trainer.cg.model.state_dict().items()}
result = trainer.run()
torch.save({"rank": rank, "world": trainer.accelerator.num_processes, "initial": initial,
            "final": trainer.cg.model.state_dict(), "losses": [r["loss"] for r in result.history],
            "shard": (trainer.feeds["action"].sampler.rank, trainer.feeds["action"].sampler.world_size
                      if hasattr(trainer.feeds["action"].sampler, "world_size") else trainer.feeds["action"].sampler.world)}, out / f"rank{rank}.pt")
