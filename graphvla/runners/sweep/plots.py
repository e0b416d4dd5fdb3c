"""The sweep's plots (PNG and SVG, matplotlib without a display): success per cell with the
Wilson interval of its pooled episodes and a dot per seed, success per bucket as grouped bars,
and the training-loss curves overlaid (mean over seeds)."""
from __future__ import annotations

from pathlib import Path

SVG_META = {"Date": None}  # no timestamp: the same runs give the same files


def _save(fig, out: Path, stem: str) -> None:
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    fig.savefig(out / f"{stem}.svg", metadata=SVG_META)


def cell_label(report: dict, cell: dict) -> str:
    """A cell's name in the plots: its key, and beside it the axis values a report's `corrections`
    relabel (heads-mt10's cell `oft` is drawn as "oft (query_transformer)"), so a plot says what the
    table says."""
    labels = (report.get("corrections") or {}).get("axis_labels") or {}
    fixed = [labels[a][v] for a, v in (cell.get("axes") or {}).items() if v in labels.get(a, {})]
    return f"{cell['cell']} ({', '.join(fixed)})" if fixed else cell["cell"]


def write_plots(report: dict, out) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    cells = [c for c in report["cells"] if c.get("pooled")]
    if not cells:
        return []
    names = [cell_label(report, c) for c in cells]
    x = list(range(len(cells)))
    written = []

    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(cells) + 2), 3.6))
    rates = [100 * c["pooled"]["rate"] for c in cells]
    low = [r - 100 * c["pooled"]["ci95"][0] for r, c in zip(rates, cells)]
    high = [100 * c["pooled"]["ci95"][1] - r for r, c in zip(rates, cells)]
    ax.bar(x, rates, yerr=[low, high], capsize=4, color="#7aa6c2", label="pooled episodes (Wilson 95%)")
    for i, c in enumerate(cells):
        seeds = c["success"]["per_seed"]
        ax.scatter([i] * len(seeds), [100 * s for s in seeds], color="#1b3a4b", s=14, zorder=3,
                   label="one training seed" if i == 0 else None)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel(f"success % ({cells[0]['metric']})")
    ax.set_ylim(0, 100)
    ax.set_title(f"sweep {report['sweep']}")
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, out, "success")
    plt.close(fig)
    written += [out / "success.png", out / "success.svg"]

    buckets = [b for b in ("easy", "medium", "hard", "very_hard") if any(b in c["buckets"] for c in cells)]
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(buckets) + 2), 3.6))
    width = 0.8 / len(cells)
    for i, c in enumerate(cells):
        xs = [j + (i - (len(cells) - 1) / 2) * width for j in range(len(buckets))]
        vals = [100 * c["buckets"][b]["pooled"]["rate"] if b in c["buckets"] else 0 for b in buckets]
        ax.bar(xs, vals, width=width, label=cell_label(report, c))
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_ylabel("success % (pooled episodes)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out, "buckets")
    plt.close(fig)
    written += [out / "buckets.png", out / "buckets.svg"]

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for c in cells:
        curves = [r["losses"].get("loss/action") or next(iter(r["losses"].values()), [])
                  for r in c["runs"] if r.get("finished")]
        curves = [cv for cv in curves if cv]
        if not curves:
            continue
        by_step = [{int(t): v for t, v in cv} for cv in curves]
        common = sorted(set.intersection(*[set(d) for d in by_step]))  # steps every seed logged
        ax.plot(common, [sum(d[s] for d in by_step) / len(by_step) for s in common], label=cell_label(report, c),
                lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (action term, mean over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    _save(fig, out, "losses")
    plt.close(fig)
    written += [out / "losses.png", out / "losses.svg"]
    return written
