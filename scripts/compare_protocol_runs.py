"""Compare two recipes on one protocol, paired episode by episode: each recipe's `graphvla eval
--protocol` results.json per training seed, the i-th of A paired with the i-th of B (same seed,
same 500 scenes), so every pair of episodes starts from the same scene.

    python scripts/compare_protocol_runs.py --a CNN_S0.json CNN_S1.json --b EFF_S0.json EFF_S1.json \
        [--names cnn efficientnet] [-o OUT.json]

Prints, per bucket and overall (the protocol's mean of buckets), B minus A with a 95% interval from
the paired differences (each bucket's pairs' variance; the buckets weigh equally, as the overall
does), and an exact McNemar test over all pairs (episodes only A solved vs only B solved). Refuses
results of different protocols, or pairs whose episodes are not the same scenes."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from graphvla.fileio import write_text_atomic
from graphvla.sim import protocol_module
from graphvla.runners.eval.protocol import same_scenes
from graphvla.runners.eval.stats import mcnemar_exact

Z95 = 1.959964


def paired_flags(a: list[dict], b: list[dict], names_a: list[str], names_b: list[str]) -> tuple[str, dict]:
    """(protocol, {task: [(a_success, b_success), ...]}) over all seed pairs."""
    if len(a) != len(b):
        raise SystemExit(f"--a has {len(a)} results and --b {len(b)}: pair them seed by seed")
    try:
        protocol = same_scenes(a + b, names_a + names_b)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    pairs: dict[str, list[tuple[bool, bool]]] = {}
    for ra, rb in zip(a, b):
        for task, eps_a in ra["episodes"].items():
            pairs.setdefault(task, []).extend(
                (bool(x["success"]), bool(y["success"])) for x, y in zip(eps_a, rb["episodes"][task]))
    return protocol, pairs


def _difference(groups: list[list[tuple[bool, bool]]]) -> dict:
    """B minus A as the equally weighted mean over groups of paired differences, with a z interval."""
    w = 1.0 / len(groups)
    diff, var = 0.0, 0.0
    for g in groups:
        d = [int(y) - int(x) for x, y in g]
        mean = sum(d) / len(d)
        diff += w * mean
        if len(d) > 1:
            var += w * w * sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d)
    se = math.sqrt(var)
    p = math.erfc(abs(diff) / se / math.sqrt(2)) if se > 0 else (0.0 if diff else 1.0)
    only_a = sum(x and not y for g in groups for x, y in g)
    only_b = sum(y and not x for g in groups for x, y in g)
    return {"a": w * sum(sum(x for x, _ in g) / len(g) for g in groups),
            "b": w * sum(sum(y for _, y in g) / len(g) for g in groups),
            "difference": diff, "ci95": [diff - Z95 * se, diff + Z95 * se], "p_value": p,
            "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b),
            "pairs": sum(len(g) for g in groups)}


def compare(protocol: str, pairs: dict) -> dict:
    """Per bucket (tasks pooled) and overall (mean of the buckets, when all the protocol's tasks ran)."""
    P = protocol_module(protocol)
    out = {"protocol": P.NAME, "buckets": {}}
    for bucket in P.BUCKETS:
        rows = [p for t, ps in pairs.items() if P.bucket_of(t) == bucket for p in ps]
        if rows:
            out["buckets"][bucket] = _difference([rows])
    if set(pairs) == set(P.tasks()):
        out["overall"] = _difference([[p for t, ps in pairs.items() if P.bucket_of(t) == b for p in ps]
                                      for b in P.BUCKETS])
    return out


def format_comparison(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"| {result['protocol']} | {name_a} | {name_b} | {name_b} - {name_a} [95% CI] | only {name_a} | "
             f"only {name_b} | McNemar p |", "|---|---|---|---|---|---|---|"]
    rows = list(result["buckets"].items()) + ([("overall (mean of buckets)", result["overall"])]
                                              if "overall" in result else [])
    for label, r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {label} | {100 * r['a']:.1f}% | {100 * r['b']:.1f}% | {100 * r['difference']:+.1f} "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {r['only_a']} | {r['only_b']} | {r['mcnemar_p']:.2g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", nargs="+", type=Path, required=True, help="recipe A's results.json, one per seed")
    ap.add_argument("--b", nargs="+", type=Path, required=True, help="recipe B's, in the same seed order")
    ap.add_argument("--names", nargs=2, default=["A", "B"])
    ap.add_argument("-o", "--out", type=Path, help="write the comparison as JSON")
    args = ap.parse_args()
    load = lambda paths: [json.loads(p.read_text()) for p in paths]  # noqa: E731
    protocol, pairs = paired_flags(load(args.a), load(args.b), [str(p) for p in args.a], [str(p) for p in args.b])
    result = compare(protocol, pairs)
    print(format_comparison(result, *args.names), end="")
    if args.out:
        write_text_atomic(args.out, json.dumps({"a": [str(p) for p in args.a], "b": [str(p) for p in args.b],
                                                "names": args.names, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
