"""`graphvla ...`: the command-line interface. Each command lives in its own module under
`commands/` and is registered here; spec errors print as 'file:line:col: error: path: message'
with exit code 1 (a traceback only with --debug)."""
from __future__ import annotations

import sys

import click

from .commands import (check_cmds, data_cmds, eval_cmds, export_cmds, fast_cmds, graphs_cmds, import_cmds,
                       quickstart_cmds, serve_cmds, spec_cmds, sweep_cmds, train_cmds)

# Modules that define commands (each exposes `commands`: a list of click commands).
COMMAND_MODULES = [spec_cmds, graphs_cmds, check_cmds, train_cmds, serve_cmds, eval_cmds, fast_cmds, data_cmds,
                   quickstart_cmds, sweep_cmds, export_cmds, import_cmds]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show Python tracebacks")
@click.version_option(package_name="graphvla")
def main(debug):
    """GraphVLA: Vision-Language-Action policies from a YAML graph."""


for _module in COMMAND_MODULES:
    for _cmd in _module.commands:
        main.add_command(_cmd)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
