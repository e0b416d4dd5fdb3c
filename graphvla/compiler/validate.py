"""Checking a spec end to end without building a block: the document (spec layer) and the graph
(references, ports, kinds, cycles; compiler.dag), every problem of both reported at once."""
from __future__ import annotations

import networkx as nx

from ..errors import IssueList
from ..spec.loader import Spec, load_spec
from ..spec.validate import finish_issues, validate_spec
from .dag import build_dag


def validate_graph(source, overrides=()) -> Spec:
    """Load and check a spec (path, packaged name, YAML text, dict or Spec); raise SpecError with
    every error found. The spec's warnings are kept on `spec.warnings`."""
    spec, _, _ = checked_dag(source, overrides)
    return spec


def checked_dag(source, overrides=()) -> tuple[Spec, nx.MultiDiGraph, IssueList]:
    """The spec, its checked DAG and the issue list (warnings only, by then). A Spec given without
    overrides counts as already loaded and checked as a document; only its graph is checked."""
    if isinstance(source, Spec) and not overrides:
        spec = source
        issues = spec.issues()
    else:
        spec = load_spec(source, overrides, validate=False)
        issues = validate_spec(spec, finish=False)
    dag = build_dag(spec, issues)  # load_spec refuses a document that is not a mapping
    finish_issues(spec, issues)
    return spec, dag, issues
