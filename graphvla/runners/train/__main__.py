"""`python -m graphvla.runners.train SPEC --data DATA -o RUN_DIR [...]` is `graphvla train`, for
launchers that start a module: `accelerate launch -m graphvla.runners.train ...`,
`torchrun -m graphvla.runners.train ...`."""
from ...cli import main  # registers every command first (avoids a circular import of train_cmds)
from ...commands.train_cmds import train_cmd

if __name__ == "__main__":
    assert main is not None
    train_cmd(prog_name="graphvla train")
