"""Human-readable compile summary: blocks with parameter counts, edges with shapes, losses, and the
processing pipelines (what runs before the inference graph and after it)."""
from __future__ import annotations


def fmt_shape(shape) -> str:
    if shape is None:
        return "-"
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fmt_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _table(rows, header):
    rows = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize(cg) -> str:
    g = cg.dag
    counts = cg.param_counts()
    out = [f"graph {cg.name}  fingerprint {cg.fingerprint[:16]}"]
    rows = []
    total = trainable = 0
    for bid, data in g.nodes(data=True):
        if data["role"] != "block":
            continue
        if data["owner"] != bid:
            rows.append([bid, data["type"], f"shares {data['owner']}", "", ""])
            continue
        t, tr = counts.get(bid, (0, 0))
        total += t
        trainable += tr
        state = "frozen" if data["train"].get("freeze") or (t and not tr) else ("lr " + str(data["train"]["lr"]) if "lr" in data["train"] else "")
        if data["train"].get("lora"):  # only the adapters of this block train: say so beside its count
            state = ", ".join(x for x in (state, f"LoRA r {data['train']['lora'].get('r')}") if x)
        rows.append([bid, data["type"], fmt_count(t), fmt_count(tr), state])
    rows.append(["total", "", fmt_count(total), fmt_count(trainable), ""])
    out += ["", "blocks", _table(rows, ["id", "type", "params", "trainable", "train"])]
    out += ["", "edges", _table([[s, d, k, fmt_shape(sh)] for s, d, k, sh in cg.edges()], ["from", "to", "kind", "shape"])]
    loss_rows = [[d["name"], _src(g, n), d["weight"], d["stream"]] for n, d in g.nodes(data=True) if d["role"] == "loss"]
    if loss_rows:
        out += ["", "losses", _table(loss_rows, ["name", "from", "weight", "stream"])]
    out += ["", "graphs: " + ", ".join([f"train[{s}]" for s in cg.train] + ["infer"])]
    out += ["", *format_pipelines(cg)]
    for w in cg.warnings:
        out.append(w.format())
    return "\n".join(out)


def format_pipelines(cg) -> list[str]:
    """The preprocess and postprocess pipelines, one line per step in the order they run."""
    out = []
    for pipeline in (cg.preprocess, cg.postprocess):
        out.append(f"{pipeline.name}" + ("" if len(pipeline) else ": nothing"))
        out += ["  " + line for line in pipeline.describe()]
    return out


def _src(g, node):
    for _, _, e in g.in_edges(node, data=True):
        return e["ref"]
    return "?"
