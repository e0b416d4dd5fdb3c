"""Pool one protocol's evaluations of several training seeds (each a `graphvla eval --protocol`
results.json over the same episodes) into one summary: per bucket and overall over all the seeds'
episodes, with the protocol's intervals and peer tests, plus each seed's overall and their std.

    python scripts/pool_protocol_seeds.py SEED0/results.json SEED1/results.json -o OUT_DIR

Writes OUT_DIR/seeds.json and seeds.md. Refuses evaluations of different protocols, or whose
episodes are not the same scenes (then they are not the same protocol run)."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from graphvla.fileio import write_text_atomic
from graphvla.runners.eval.protocol import format_protocol_markdown, same_scenes, summarize_protocol


def pool(results: list[dict], names: list[str]) -> tuple[dict, dict]:
    """(what seeds.json holds, the protocol summary of the pooled episodes)."""
    try:
        protocol = same_scenes(results, names)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    per_task = {t: [e for r in results for e in r["episodes"][t]] for t in results[0]["episodes"]}
    summary = summarize_protocol(per_task, protocol=protocol)
    seen = [r.get("episodes_from_training_scenes") for r in results]  # same scenes, so the counts add up
    summary["episodes_from_training_scenes"] = None if None in seen else sum(seen)
    headline = [r["overall"]["success_rate"] if r.get("overall") else r["mean"]["success_rate"] for r in results]
    return {"seeds": names, "per_seed": headline, "mean_of_seeds": statistics.mean(headline),
            "std_of_seeds": statistics.stdev(headline) if len(headline) > 1 else 0.0,
            "pooled": {k: summary[k] for k in ("protocol", "buckets", "overall", "mean", "episodes_from_training_scenes")
                       if k in summary},
            "versus_peers": summary["versus_peers"]}, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    pooled, summary = pool([json.loads(p.read_text()) for p in args.results], [str(p) for p in args.results])
    lines = [f"# {len(args.results)} training seeds pooled ({summary['protocol']})", ""]
    lines += [f"- {name}: {100 * rate:.1f}%" for name, rate in zip(pooled["seeds"], pooled["per_seed"])]
    lines += [f"- mean of seeds {100 * pooled['mean_of_seeds']:.1f}% ± {100 * pooled['std_of_seeds']:.1f} (std)", "",
              "Pooled episodes (Wilson 95% intervals; the overall's at the stratified mean's effective size):", "",
              format_protocol_markdown(summary, label=f"GraphVLA, {len(args.results)} seeds pooled").rstrip(), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "seeds.json", json.dumps(pooled, indent=2) + "\n")
    write_text_atomic(args.out / "seeds.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
