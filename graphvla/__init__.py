"""GraphVLA: Vision-Language-Action policies from a declarative YAML graph."""
from .errors import SpecError, SpecIssue
from .spec.loader import Spec, load_spec

__version__ = "0.1.0"


def compile_graph(source, overrides=(), device="meta"):
    """Compile a spec into train / inference fx GraphModules. See compiler.compile.compile_graph."""
    from .compiler.compile import compile_graph as _compile

    return _compile(source, overrides, device=device)


def validate_graph(source, overrides=()):
    """Check a spec as a document and as a graph, every error at once. See compiler.validate."""
    from .compiler.validate import validate_graph as _validate

    return _validate(source, overrides)


def load_policy(path, device="cpu"):
    """A ready inference policy from a run or checkpoint directory. See policy.loading.load_policy."""
    from .policy.loading import load_policy as _load

    return _load(path, device=device)


__all__ = ["SpecError", "SpecIssue", "Spec", "load_spec", "validate_graph", "compile_graph", "load_policy", "__version__"]
