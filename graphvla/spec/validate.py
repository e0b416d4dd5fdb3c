"""Checking a loaded spec as a document: JSON schema (every key), input-port fields per kind,
version, names. Graph checks (references, ports, kinds, cycles) need the DAG and live one layer
up, in the compiler; `compiler.validate.validate_graph` runs both and reports every error at once."""
from __future__ import annotations

import keyword
import math

import jsonschema

from ..errors import IssueList, article, did_you_mean
from .schema import COMMON_INPUT_FIELDS, INPUT_FIELDS, SPEC_VERSION, spec_schema

MAX_INT = 2**63 - 1
RESERVED_BLOCK_IDS = {"inputs", "outputs", "losses", "loss", "self", "training", "generator", "noise"}


def _is_reserved_attr(name: str) -> bool:
    import torch.fx
    import torch.nn

    probe = torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())
    return hasattr(probe, name)


def validate_spec(spec, issues: IssueList | None = None, finish: bool = True) -> IssueList:
    """Check the document. With finish (the default) raise SpecError with every problem found and
    return the issues (warnings) otherwise; without it only collect, so that a caller can add the
    graph checks to the same list and report everything at once (`finish_issues`)."""
    from ..blocks.registry import registered

    issues = issues or spec.issues()
    data = spec.data
    types = registered(aliases=True)
    _check_version(data, issues)
    _check_schema(data, types, issues)
    _check_renamed_types(data, issues)
    _check_inputs(data, issues)
    _check_names(data, issues)
    _check_finite(data, (), issues)
    if finish:
        finish_issues(spec, issues)
    return issues


def finish_issues(spec, issues: IssueList) -> IssueList:
    """Report each problem once, keep the warnings on the spec, raise if any error was found."""
    _drop_repeats(issues)
    spec.warnings = issues.warnings
    issues.raise_if_errors()
    return issues


def _drop_repeats(issues):
    """The schema can report one fault through two routes (a block's base schema and its
    type-specific `with:` schema); keep each message once per path."""
    seen, unique = set(), []
    for i in issues.issues:
        key = (i.message, i.path, i.severity)
        if key not in seen:
            seen.add(key)
            unique.append(i)
    issues.issues[:] = unique


def _check_finite(value, path, issues):
    """NaN and infinity pass JSON-schema number checks (every comparison with NaN is false);
    integers past 64 bits pass them too but overflow every tensor constructor."""
    if isinstance(value, float) and not math.isfinite(value):
        issues.add(f"{value} is not a finite number", path, block=_block_of(path))
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        issues.add(f"{value} is too large (more than 64 bits)", path, block=_block_of(path))
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, path + (k,), issues)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, path + (i,), issues)


def _check_version(data, issues):
    if not isinstance(data, dict):
        return
    v = data.get("graphvla")
    if v is None or isinstance(v, bool) or not isinstance(v, int):
        return  # reported by the schema (required / type)
    if v > SPEC_VERSION:
        issues.add(f"spec format version {v} is newer than this GraphVLA understands ({SPEC_VERSION}); upgrade graphvla", ("graphvla",))
    elif v < SPEC_VERSION:
        issues.add(f"spec format version {v} is not supported (only {SPEC_VERSION} exists; there is nothing to migrate from)", ("graphvla",))


def _check_schema(data, types, issues):
    report_schema_errors(data, spec_schema(types), issues, types)


def report_schema_errors(data, schema, issues, types=()):
    """Every JSON-schema violation of `data`, in the user's terms (unknown keys with "did you
    mean", wrong types described), added to `issues` in document order. Also used for sweep files."""
    validator = jsonschema.Draft202012Validator(schema)
    for err in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        _report(err, schema, types, issues)


def _block_of(path):
    return path[1] if len(path) >= 2 and path[0] == "blocks" else None


def _report(err, schema, types, issues):
    path = tuple(err.absolute_path)
    block = _block_of(path)
    v, inst = err.validator, err.instance
    if v == "additionalProperties":
        allowed = list((err.schema.get("properties") or {}).keys())
        for key in [k for k in inst if k not in allowed]:
            hint = did_you_mean(key, allowed) or ("allowed: " + ", ".join(allowed) if allowed else "no keys allowed here")
            issues.add(f"unknown key '{key}'", path + (key,), block=_block_of(path + (key,)), hint=hint,
                       location=issues.locate(path + (key,), key=True) if issues.locate else None)
    elif v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        issues.add(f"missing required key '{missing}'", path, block=block)
    elif v == "enum" and len(path) == 3 and path[0] == "blocks" and path[2] == "type":
        from ..errors import known_list

        issues.add(f"unknown block type '{inst}'", path, block=block, hint=did_you_mean(inst, types) or known_list(types))
    elif v == "enum":
        issues.add(f"{inst!r} is not one of {err.validator_value}", path, block=block, hint=did_you_mean(str(inst), map(str, err.validator_value)))
    elif v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        issues.add(f"expected {article(want)}, got {_describe(inst)}", path, block=block)
    elif v == "pattern" and err.validator_value.count(r"\.") == 1:
        issues.add(f"'{inst}' is not a reference: write 'inputs.NAME' or 'BLOCK.PORT'", path, block=block)
    elif v == "pattern" and "propertyNames" in err.absolute_schema_path:
        issues.add(f"name '{inst}' must be an identifier (letters, digits, _)", path + (inst,), block=block,
                   location=issues.locate(path + (inst,), key=True) if issues.locate else None)
    elif v == "propertyNames":
        for sub in err.context or []:
            _report(sub, schema, types, issues)
        if not err.context:
            issues.add(err.message, path, block=block)
    elif v in ("allOf", "anyOf", "oneOf") and err.context:
        if v == "oneOf" and path and path[-1] == "extends":
            issues.add("extends must be a file path or a list of file paths", path)
        else:
            for sub in err.context:
                _report(sub, schema, types, issues)
    elif v == "minProperties" and err.validator_value == 1:
        issues.add("must not be empty", path, block=block)
    else:
        issues.add(err.message if len(err.message) < 200 else err.message[:200] + "...", path, block=block)


def _describe(value):
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ('{value[:40]}')"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _check_renamed_types(data, issues):
    """An old block type name (blocks/registry.py ALIASES) still builds the renamed block, unchanged,
    so old specs and runs load as before; say the new name once per block, and why."""
    import warnings

    from ..blocks.registry import renamed

    blocks = data.get("blocks") if isinstance(data, dict) else None
    for bid, b in (blocks.items() if isinstance(blocks, dict) else ()):
        new = renamed(b.get("type")) if isinstance(b, dict) else None
        if new:
            message = (f"block type '{b['type']}' was renamed '{new}' (the old name claimed a published model this "
                       f"block is not: docs/heads.md); it builds the same block, write '{new}'")
            issues.add(message, ("blocks", bid, "type"), block=bid, severity="warning")
            warnings.warn(f"blocks.{bid}.type: {message}", FutureWarning, stacklevel=3)


def _check_inputs(data, issues):
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(inputs, dict):
        return
    for name, decl in inputs.items():
        if not isinstance(decl, dict) or not isinstance(decl.get("kind"), str) or decl["kind"] not in INPUT_FIELDS:
            continue
        allowed, required = INPUT_FIELDS[decl["kind"]]
        for key in decl:
            if key == "privileged" and key not in allowed:
                issues.add(f"'privileged' does not apply to {article(decl['kind'])} input", ("inputs", name, key),
                           hint="only a state input may be privileged: it reads simulator state no robot has, "
                                "such as observation.environment_state")
            elif key not in allowed and key not in COMMON_INPUT_FIELDS and key in (
                "views", "size", "channels", "dim", "history", "horizon", "shape", "vocab", "max_length"):
                issues.add(f"'{key}' does not apply to a {decl['kind']} input", ("inputs", name, key),
                           hint="fields for this kind: " + ", ".join(sorted(allowed)) if allowed else "this kind takes no fields")
        for key in sorted(required - set(decl)):
            issues.add(f"a {decl['kind']} input needs '{key}'", ("inputs", name))


def _check_names(data, issues):
    if not isinstance(data, dict):
        return
    for section in ("blocks", "inputs"):
        items = data.get(section)
        if not isinstance(items, dict):
            continue
        for name in items:
            if not isinstance(name, str):
                continue
            if keyword.iskeyword(name):
                issues.add(f"'{name}' is a Python keyword and cannot name a {section[:-1]}", (section, name))
            elif section == "blocks" and (name in RESERVED_BLOCK_IDS or _is_reserved_attr(name)):
                issues.add(f"block id '{name}' is reserved (it clashes with a torch module attribute); rename the block", (section, name), block=name)
            elif section == "inputs" and name in ("self", "generator", "noise"):  # noise: a sampling head's argument
                issues.add(f"input name '{name}' is reserved; rename the input", (section, name))
