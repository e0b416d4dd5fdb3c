"""`graphvla sweep`: controlled comparisons. A sweep file declares a base graph, axes of variants,
seeds, shared trainer overrides and one protocol evaluation; each cell is trained and evaluated
by the runner functions behind `graphvla train` and `graphvla eval` (runners/stages.py, a child
process per stage), refused if it changes more than its axes declare, and reported with intervals
and paired tests (config -> control -> execute -> report)."""
from .config import Run, Sweep, load_sweep
from .execute import SweepRefused, check_controls, execute_sweep
from .report import format_markdown, write_report

__all__ = ["Run", "Sweep", "SweepRefused", "check_controls", "execute_sweep", "format_markdown", "load_sweep",
           "write_report"]
