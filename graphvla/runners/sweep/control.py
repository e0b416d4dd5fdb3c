"""The sweep's control: a cell's graph may differ from the base only where its axes say.

Both specs get the sweep's trainer overrides and the run's seed, so those are never differences;
`graphvla diff`'s rows (defaults filled in, so writing a default is not a change) are mapped to
spec paths and each must lie under one of the axes' `changes:` paths."""
from __future__ import annotations

from ...compiler.diff import Change, diff_specs, format_diff

IGNORED = {("graph", "name")}  # a variant graph's own name is not a difference in behaviour


def documentation_only(path: str) -> bool:
    """`description:` texts document a port or block; changing one changes no behaviour."""
    return path.endswith(".description")


def change_path(row: Change) -> str:
    """The spec path a diff row touches: 'blocks.head.with.hidden', 'losses.future.weight', ..."""
    if row.section == "edges":  # 'src -> dst': the consumer's input (or the loss / output) changed
        dst = row.item.split(" -> ", 1)[1]
        kind, _, rest = dst.partition(".")
        if kind == "loss":
            return f"losses.{rest}"
        if kind == "output":
            return f"outputs.{rest}"
        return f"blocks.{kind}.in.{rest}"
    if row.section in ("trainer", "serve"):
        return f"{row.section}.{row.item}"
    if row.section == "graph":
        return row.item
    base = f"{row.section}.{row.item}"
    if row.sign != "~" or not row.detail:
        return base
    first = row.detail.split(" ", 1)[0]
    if row.section == "blocks" and "." not in first:  # 'head.mlp -> head.fast': the block's type
        return f"{base}.type"
    return f"{base}.{first}"


def within(path: str, allowed) -> bool:
    return any(path == a or path.startswith(a + ".") for a in allowed)


def uncontrolled(base_spec, cell_spec, allowed) -> list[Change]:
    """The rows of the cell's diff against the base that its axes do not declare."""
    return [r for r in diff_specs(base_spec, cell_spec)
            if (r.section, r.item) not in IGNORED and not documentation_only(change_path(r))
            and not within(change_path(r), allowed)]


def describe_refusal(run, base_spec, cell_spec, rows) -> str:
    paths = sorted({change_path(r) for r in rows})
    return (f"cell '{run.cell}' (seed {run.seed}) changes {', '.join(paths)}, which its axes do not declare "
            f"(changes: {', '.join(run.allowed)}); add the paths to the axis's `changes:` if they are meant, "
            f"or make the variant change only its axis. Its diff against the base:\n"
            + format_diff(base_spec, cell_spec, diff_specs(base_spec, cell_spec)))
