"""Success-rate statistics and the printed table."""
from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for the default z). Unlike the
    normal approximation it stays inside [0, 1] and is not degenerate at 0 or n successes."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)



def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired successes: b and c are the discordant pairs
    (only the first won, only the second won), tested against binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): several comparisons against one
    best cell must not each get the full 5% chance of a false "better"."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted

def summarize(per_task: dict[str, list[bool]]) -> dict:
    """{task: {success_rate, successes, episodes, ci95}, ..., 'mean': {...}} (mean over tasks;
    its interval pools all episodes)."""
    rows = {}
    total_s = total_n = 0
    for task, flags in per_task.items():
        s, n = int(sum(flags)), len(flags)
        total_s, total_n = total_s + s, total_n + n
        rows[task] = {"success_rate": s / n if n else 0.0, "successes": s, "episodes": n,
                      "ci95": list(wilson_interval(s, n))}
    rates = [r["success_rate"] for r in rows.values()]
    mean = {"success_rate": sum(rates) / len(rates) if rates else 0.0, "successes": total_s,
            "episodes": total_n, "ci95": list(wilson_interval(total_s, total_n))}
    return {"tasks": rows, "mean": mean}


def format_table(summary: dict) -> str:
    rows = [("task", "success", "episodes", "95% CI")]
    for task, r in summary["tasks"].items():
        rows.append((task, f"{100 * r['success_rate']:.1f}%", f"{r['successes']}/{r['episodes']}",
                     f"[{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"))
    m = summary["mean"]
    rows.append(("mean", f"{100 * m['success_rate']:.1f}%", f"{m['successes']}/{m['episodes']}",
                 f"[{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
