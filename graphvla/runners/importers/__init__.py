"""Importers: a checkpoint written by another project's trainer -> a GraphVLA run folder
(`graphvla import FRAMEWORK CKPT_DIR -o RUN`). One module per source project."""
