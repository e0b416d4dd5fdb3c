"""Run by test_engines.py under `accelerate launch --config_file configs/accelerate/<engine>.yaml
--num_processes 2`: in one launch, trains the tiny graph for 6 steps without a break (run_a), then
3 steps, a checkpoint and --resume for 3 more in a fresh Trainer (run_b). Each rank saves the
curves, the layout it derived and the samples it drew."""
import json
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
overrides = ["trainer.max_steps=6", "trainer.save_every=100", "trainer.warmup_steps=1", "trainer.batch_size=8",
             "trainer.grad_clip=0.5"] + sys.argv[2:]
spec = load_spec(TINY_SPEC, overrides)
ds = SyntheticActions(48)
stats = port_stats(ds, ["state", "actions"])


def trainer(run, **kw):
    norm = Normalizer(stats, spec.section("trainer")["normalization"])
    return Trainer.from_spec(spec, DataBundle({"action": ds}, stats), out / run, normalizer=norm, collate=collate,
                             progress=False, **kw)


whole = trainer("run_a")
rank, layout = whole.accelerator.process_index, whole.layout
full = [r["loss"] for r in whole.run().history]
first = trainer("run_b", stop_after=3).run()
second = trainer("run_b", resume=True)
resumed_from = str(second.resumed_from)
rest = second.run()
result = {"rank": rank, "world": whole.accelerator.num_processes, "engine": whole.engine,
          "per_device": layout.per_device, "grad_accum": layout.grad_accum, "layout": layout.describe(),
          "full": full, "interrupted": [r["loss"] for r in first.history] + [r["loss"] for r in rest.history],
          "resumed_from": resumed_from}
(out / f"rank{rank}.json").write_text(json.dumps(result))
