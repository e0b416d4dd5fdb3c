"""GraphVLA: Vision-Language-Action policies from a declarative YAML graph."""
from .errors import SpecError, SpecIssue
from .spec.loader import Spec, load_spec

__version__ = "0.1.0"


def compile_graph(source, overrides=(), device="meta"):
    """Compile a spec into train / inference fx GraphModules. See compiler.compile.compile_graph."""
    from .compiler.compile import compile_graph as _compile

    return _compile(source, overrides, device=device)


__all__ = ["SpecError", "SpecIssue", "Spec", "load_spec", "compile_graph", "__version__"]
