"""A sweep's report, rebuilt from the finished runs' files alone (so `graphvla sweep --report`
gives the same results.md byte for byte): results.json, results.csv, results.md.

Per cell: parameters, training time and samples/s, the final training losses, and success per
bucket and overall as mean +- std over seeds plus the Wilson interval of the pooled episodes.
Between the best cell (or the sweep's `reference:` cell, when it names one) and each other one, an
exact McNemar test over the same episodes (same seed, task and episode), Holm-adjusted over the
comparisons: a difference is called only when the adjusted p is below 0.05."""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
from pathlib import Path

from ...fileio import write_text_atomic
from ..eval.stats import holm_adjust, mcnemar_exact, wilson_interval
from .config import Run, Sweep
from .execute import read_state, run_dir

ALPHA = 0.05
FINAL_FRACTION = 0.1  # the final loss: the mean of the last 10% of logged steps


PACKAGED_GRAPH = re.compile(r"(?:[^\s']*/)?graphvla/graphs/([^\s']+?)\.ya?ml(?=\s|'|$)")


def portable(text: str) -> str:
    """A packaged graph's path (in whichever checkout or install the run used) as its packaged
    name, which `graphvla train` resolves on any machine: the report's rerun commands travel."""
    return PACKAGED_GRAPH.sub(r"\1", text)


def _final(points: list) -> float | None:
    if not points:
        return None
    k = max(1, int(len(points) * FINAL_FRACTION))
    return sum(v for _, v in points[-k:]) / k


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def _pooled(successes: int, episodes: int) -> dict:
    return {"successes": successes, "episodes": episodes, "rate": successes / episodes if episodes else 0.0,
            "ci95": list(wilson_interval(successes, episodes))}


def headline_of(results: dict) -> tuple[str, float]:
    """The protocol's overall (mean of buckets) when every task ran, else the mean over tasks."""
    if "overall" in results:
        return "overall", results["overall"]["success_rate"]
    return "mean over tasks", results["mean"]["success_rate"]


def collect(sweep: Sweep, runs: list[Run], out) -> dict:
    """Everything the report shows, as plain data, from the runs' files."""
    cells: dict[str, dict] = {}
    for run in runs:
        d = run_dir(out, run)
        state = read_state(d)
        cell = cells.setdefault(run.cell, {"cell": run.cell, "axes": run.axes, "runs": []})
        if sweep.cell_recording:  # data axes: the recording the cell was trained on
            cell["recording"] = sweep.cell_recording[run.cell]
        if not state.get("finished"):
            cell["runs"].append({"seed": run.seed, "finished": False})
            continue
        meta = json.loads((d / "cell.json").read_text())
        results = json.loads((d / "eval" / "results.json").read_text())
        metric, value = headline_of(results)
        train_s = sum(s["seconds"] for s in state["train_sessions"])
        steps = sum(s["to_step"] - s["from_step"] for s in state["train_sessions"])
        cell["runs"].append({
            "seed": run.seed, "finished": True, "metric": metric, "success": value,
            "buckets": {b: v["success_rate"] for b, v in results["buckets"].items()},
            "bucket_counts": {b: [v["successes"], v["episodes"]] for b, v in results["buckets"].items()},
            "successes": results["mean"]["successes"], "episodes": results["mean"]["episodes"],
            "outcomes": {f"{t}/{e['episode']}": bool(e["success"]) for t, rows in results["episodes"].items() for e in rows},
            "train_seconds": train_s, "samples_per_s": steps * meta["batch_size"] / train_s if train_s else 0.0,
            "final_losses": {tag: _final(points) for tag, points in state.get("losses", {}).items()},
            "losses": state.get("losses", {}), "eval_seconds": state.get("eval_seconds"),
            "fingerprint": meta["fingerprint"], "diff": meta["diff"], "params_total": meta["params_total"],
            "params_trainable": meta["params_trainable"], "train_command": portable(meta["train_command"]),
            "eval_command": meta["eval_command"], "overrides": meta["overrides"], "graph": portable(meta["graph"])})
    for cell in cells.values():
        _aggregate(cell)
    comparisons = _compare(cells, sweep.reference)
    report = {"sweep": sweep.name, "description": sweep.description, "file": sweep.file, "base": sweep.base,
              "data": sweep.data if isinstance(sweep.data, str) else {"record": sweep.data.get("record")},
              "axes": {a: list(d["variants"]) for a, d in sweep.axes.items()}, "seeds": sweep.seeds,
              "trainer": sweep.trainer, "eval": sweep.eval, "cells": list(cells.values()), "comparisons": comparisons}
    if sweep.recordings:
        report["recordings"] = {name: r["settings"] for name, r in sweep.recordings.items()}
    return report


def _aggregate(cell: dict) -> None:
    done = [r for r in cell["runs"] if r["finished"]]
    cell["complete"] = bool(done) and len(done) == len(cell["runs"])
    if not done:
        return
    cell["metric"] = done[0]["metric"]
    cell["success"] = _spread([r["success"] for r in done])
    cell["pooled"] = _pooled(sum(r["successes"] for r in done), sum(r["episodes"] for r in done))
    cell["buckets"] = {}
    for b in done[0]["buckets"]:
        s = sum(r["bucket_counts"][b][0] for r in done)
        n = sum(r["bucket_counts"][b][1] for r in done)
        cell["buckets"][b] = {**_spread([r["buckets"][b] for r in done]), "pooled": _pooled(s, n)}
    cell["params_total"], cell["params_trainable"] = done[0]["params_total"], done[0]["params_trainable"]
    cell["train_seconds"] = _spread([r["train_seconds"] for r in done])
    cell["samples_per_s"] = _spread([r["samples_per_s"] for r in done])
    tags = sorted({t for r in done for t, v in r["final_losses"].items() if v is not None})
    cell["final_losses"] = {t: _spread([r["final_losses"][t] for r in done if r["final_losses"].get(t) is not None])
                            for t in tags}


def _paired(a: dict, b: dict) -> tuple[int, int, int]:
    """(pairs, only a succeeded, only b succeeded) over the episodes both ran at the same seed."""
    pairs = only_a = only_b = 0
    runs_b = {r["seed"]: r for r in b["runs"] if r["finished"]}
    for ra in a["runs"]:
        rb = runs_b.get(ra["seed"]) if ra["finished"] else None
        if rb is None:
            continue
        for ep, win in ra["outcomes"].items():
            if ep in rb["outcomes"]:
                pairs += 1
                only_a += win and not rb["outcomes"][ep]
                only_b += rb["outcomes"][ep] and not win
    return pairs, only_a, only_b


def _compare(cells: dict, reference: str | None = None) -> dict:
    """Each cell against the best one, or against `reference` (a one-factor sweep's recipe) when the
    sweep names it: a reference row can then go either way, a best-cell row only one."""
    ranked = [c for c in cells.values() if c.get("pooled")]
    if reference is not None:
        anchor = next((c for c in ranked if c["cell"] == reference), None)
        if anchor is None or len(ranked) < 2:
            return {"reference": reference, "rows": []}
    else:
        if len(ranked) < 2:
            return {"best": ranked[0]["cell"] if ranked else None, "rows": []}
        anchor = max(ranked, key=lambda c: c["pooled"]["rate"])  # first of equals: cells keep the sweep's order
    only = "only_reference" if reference is not None else "only_best"
    rows = []
    for other in ranked:
        if other is anchor:
            continue
        pairs, only_anchor, only_other = _paired(anchor, other)
        rows.append({"cell": other["cell"], "pairs": pairs, only: only_anchor, "only_other": only_other,
                     "p": mcnemar_exact(only_anchor, only_other),
                     "difference": anchor["pooled"]["rate"] - other["pooled"]["rate"]})
    for row, adjusted in zip(rows, holm_adjust([r["p"] for r in rows])):
        row["p_holm"] = adjusted
        row["significant"] = adjusted < ALPHA and row[only] != row["only_other"]
    kind = {"reference": reference} if reference is not None else {"best": anchor["cell"]}
    return {**kind, "alpha": ALPHA, "test": "exact McNemar, Holm-adjusted", "rows": rows}


# text ----------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _mean_std(s: dict) -> str:
    return f"{_pct(s['mean'])} ± {_pct(s['std'])}"


def _ci(p: dict) -> str:
    return f"{_pct(p['rate'])} [{_pct(p['ci95'][0])}, {_pct(p['ci95'][1])}]"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def buckets_of(report: dict) -> list[str]:
    seen = []
    for c in report["cells"]:
        for b in c.get("buckets") or {}:
            if b not in seen:
                seen.append(b)
    return seen


def format_markdown(report: dict) -> str:
    """results.md from results.json. A report's optional `corrections` (made after the runs, the
    recorded data left as it is) add a note under the title, replace the description and relabel
    axis values and cell headings: {"note", "description", "axis_labels": {axis: {value: label}},
    "cell_titles": {cell: text}}."""
    axes = list(report["axes"])
    buckets = buckets_of(report)
    e = report["eval"]
    where = e.get("tasks") or e.get("buckets") or "all tasks"
    fix = report.get("corrections") or {}
    labels = fix.get("axis_labels") or {}
    lines = [f"# Sweep `{report['sweep']}`", ""]
    if fix.get("note"):
        lines += [fix["note"].strip(), ""]
    description = fix.get("description", report["description"])
    if description:
        lines += [description.strip(), ""]
    lines += [f"- Base graph: `{_short(report['base'])}`; axes: "
              + "; ".join(f"{a} = {', '.join(v)}" for a, v in report["axes"].items()),
              f"- Training seeds: {', '.join(map(str, report['seeds']))}; every cell: "
              + (", ".join(f"trainer.{k}={v}" for k, v in report["trainer"].items()) or "the graphs' own trainer"),
              (f"- Evaluation: protocol {e['protocol']}, {where}, {e['episodes']} episodes per task per seed; "
              "success = mean over tasks (or the protocol's overall when all its tasks ran); "
              "± is the std over seeds, [ ] the Wilson 95% interval of the pooled episodes")]
    if report.get("recordings"):  # data axes: each recording made once, shared by the cells using it
        users = {name: [c["cell"] for c in report["cells"] if c.get("recording") == name] for name in report["recordings"]}
        lines += ["- Recordings (each made once; a cell is trained on one): " + "; ".join(
            f"`{name}` ({r['protocol']} {r['tasks']}, {r['size']}x{r['size']} px, {r['episodes']} demonstrations "
            f"per task): {', '.join(users[name]) or 'no cell'}" for name, r in report["recordings"].items())]
    lines += [""]
    head = ["cell", *axes, "params (trainable)", "train min", "samples/s", "final loss", "success ± std",
            "pooled [95% CI]", *buckets]
    rows = [head]
    for c in report["cells"]:
        if not c.get("pooled"):
            rows.append([c["cell"], *[c["axes"][a] for a in axes], "not run yet", *[""] * (len(head) - len(axes) - 2)])
            continue
        loss = c["final_losses"].get("loss/action") or next(iter(c["final_losses"].values()), None)
        flag = "" if c["complete"] else " (some seeds missing)"
        rows.append([c["cell"] + flag, *[labels.get(a, {}).get(c["axes"][a], c["axes"][a]) for a in axes],
                     f"{_count(c['params_total'])} ({_count(c['params_trainable'])})",
                     f"{c['train_seconds']['mean'] / 60:.1f}", f"{c['samples_per_s']['mean']:.0f}",
                     f"{loss['mean']:.4f}" if loss else "-", _mean_std(c["success"]), _ci(c["pooled"]),
                     *[_ci(c["buckets"][b]["pooled"]) if b in c["buckets"] else "-" for b in buckets]])
    lines += _table(rows) + [""]
    comp = report["comparisons"]
    if comp["rows"]:
        anchor = comp.get("reference") or comp["best"]
        only = "only_reference" if "reference" in comp else "only_best"
        title = "the sweep's reference cell" if "reference" in comp else "the best cell"
        lines += [f"## Against {title}, `{anchor}`", "",
                  (f"Paired over the same episodes (same seed, task and episode); {comp['test']}; "
                  f"a difference is called only when the adjusted p < {comp['alpha']}."), ""]
        rows = [["cell", "pairs", f"only {anchor}", "only cell", "McNemar p", "Holm p", "verdict"]]
        for r in comp["rows"]:
            higher = anchor if r[only] > r["only_other"] else r["cell"]
            verdict = (f"{higher} higher, significant at 95%" if r["significant"]
                       else "no significant difference at 95%")
            rows.append([r["cell"], str(r["pairs"]), str(r[only]), str(r["only_other"]), _p(r["p"]),
                         _p(r["p_holm"]), verdict])
        lines += _table(rows) + [""]
    lines += ["## Cells", ""]
    for c in report["cells"]:
        done = [r for r in c["runs"] if r["finished"]]
        title = (fix.get("cell_titles") or {}).get(c["cell"])
        lines += [f"### `{c['cell']}`" + (f" ({title})" if title else ""), ""]
        if not done:
            lines += ["not run yet", ""]
            continue
        r0 = done[0]
        if c.get("recording"):
            lines += [f"- trained on the recording `{c['recording']}`"]
        lines += [f"- rerun the cell (every seed): `graphvla sweep {_short(report['file'])} -o DIR --only {c['cell']}`",
                  f"- fingerprint `{r0['fingerprint'][:16]}`; its seed {r0['seed']} alone is:", "",
                  "```", r0["train_command"], r0["eval_command"], "```", "", "Diff against the base:", "",
                  "```", *_relative_diff(r0["diff"]), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("graphs") + 1:]) if "graphs" in parts else path


def _relative_diff(text: str) -> list[str]:
    """The diff's header names files; keep only their packaged part so the report reads the same anywhere."""
    out = []
    for line in text.splitlines():
        if line.startswith(("--- ", "+++ ")):
            sign, rest = line[:4], line[4:]
            path, _, tail = rest.partition(" (")
            line = f"{sign}{_short(path)} ({tail}" if tail else line
        out.append(line)
    return out


def format_csv(report: dict) -> str:
    axes = list(report["axes"])
    buckets = buckets_of(report)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    rec = ["recording"] if report.get("recordings") else []  # data axes only: old reports keep their columns
    w.writerow(["cell", *axes, *rec, "seeds", "params_total", "params_trainable", "train_seconds_mean", "samples_per_s_mean",
                "final_loss_action_mean", "success_mean", "success_std", "pooled_rate", "pooled_ci_low",
                "pooled_ci_high", *[f"{b}_{k}" for b in buckets for k in ("mean", "std", "ci_low", "ci_high")]])
    for c in report["cells"]:
        if not c.get("pooled"):
            continue
        loss = c["final_losses"].get("loss/action") or next(iter(c["final_losses"].values()), {"mean": ""})
        row = [c["cell"], *[c["axes"][a] for a in axes], *[c.get("recording", "") for _ in rec], len([r for r in c["runs"] if r["finished"]]),
               c["params_total"], c["params_trainable"], round(c["train_seconds"]["mean"], 1),
               round(c["samples_per_s"]["mean"], 1), loss["mean"], c["success"]["mean"], c["success"]["std"],
               c["pooled"]["rate"], *c["pooled"]["ci95"]]
        for b in buckets:
            v = c["buckets"].get(b)
            row += [v["mean"], v["std"], *v["pooled"]["ci95"]] if v else ["", "", "", ""]
        w.writerow(row)
    return buf.getvalue()


def write_report(sweep: Sweep, runs: list[Run], out, plots: bool = True) -> dict:
    """results.json, results.csv, results.md (+ plots) in OUT, from the runs' files."""
    report = collect(sweep, runs, out)
    out = Path(out)
    slim = json.loads(json.dumps(report))
    for c in slim["cells"]:
        for r in c["runs"]:
            r.pop("outcomes", None)
            r.pop("losses", None)
    write_text_atomic(out / "results.json", json.dumps(slim, indent=2) + "\n")
    write_text_atomic(out / "results.csv", format_csv(report))
    write_text_atomic(out / "results.md", format_markdown(report))
    if plots:
        from .plots import write_plots

        write_plots(report, out)
    return report
