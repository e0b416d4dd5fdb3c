"""GraphVLA: Vision-Language-Action policies from a declarative YAML graph."""
from .errors import SpecError, SpecIssue
from .spec.loader import Spec, load_spec

__version__ = "0.1.0"


def compile_graph(source, overrides=(), device="meta"):
    """Compile a spec into train / inference fx GraphModules. See compiler.compile.compile_graph."""
    from .compiler.compile import compile_graph as _compile

    return _compile(source, overrides, device=device)


def load_policy(path, device="cpu"):
    """A ready inference policy from a run or checkpoint directory. See runners.loading.load_policy."""
    from .runners.loading import load_policy as _load

    return _load(path, device=device)


__all__ = ["SpecError", "SpecIssue", "Spec", "load_spec", "compile_graph", "load_policy", "__version__"]
