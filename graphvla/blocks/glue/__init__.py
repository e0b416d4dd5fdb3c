"""Glue blocks (`glue.*`): the small adapters between backbones and heads, one module per type."""
