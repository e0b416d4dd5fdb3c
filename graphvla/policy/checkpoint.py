"""Checkpoints: RUN_DIR/checkpoints/step_XXXXXXX/ written atomically, `latest` pointer, pruning.

A checkpoint directory is filled under a temporary name and renamed into place only when every
file is written and flushed, so a crash mid-save never leaves a `step_*` directory that resume
would pick up; the `latest` text file is replaced atomically after the rename."""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from ..fileio import TMP_PREFIX, write_text_atomic

STEP_DIR = re.compile(r"^step_(\d{7,})$")
# runs written before the lr became a function of the step also hold scheduler.pt, which nothing reads
FILES = ("model.safetensors", "optimizer.pt", "trainer_state.json", "rng.pt", "spec.yaml",
         "graph.json", "normalization.json", "assets.json",
         # the processing pipelines (write_pipelines) and their steps' asset folders (statistics, tokenizers)
         "preprocess.json", "postprocess.json", "preprocess", "postprocess")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def begin_checkpoint(run_dir, step: int) -> Path:
    """The temporary folder a checkpoint is written into (every process may write its shards there)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def write_checkpoint(run_dir, step: int, write_files, keep_last: int | None = None, tmp: Path | None = None) -> Path:
    """Create checkpoints/step_XXXXXXX atomically. write_files(tmp_dir) writes the contents; `tmp`
    (from begin_checkpoint) may already hold files other processes wrote."""
    root = checkpoints_dir(run_dir)
    final = root / step_dir_name(step)
    tmp = tmp or begin_checkpoint(run_dir, step)
    try:
        write_files(tmp)
        _fsync_dir_files(tmp)
        if final.exists():  # saving the same step again (e.g. after a resume): replace it
            old = root / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / "latest", final.name + "\n")
    if keep_last:
        prune(root, keep_last)
    return final


def _fsync_dir_files(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file() and not p.is_symlink():  # symlinks: referenced base weights, not ours to flush
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def step_dirs(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints (never the one `latest` names)."""
    latest = read_latest_name(root)
    dirs = step_dirs(root)
    for p in dirs[: max(len(dirs) - keep_last, 0)]:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)


def clean_temporaries(root: Path) -> None:
    """Remove leftovers of saves that crashed (never visible as checkpoints)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def read_latest_name(root: Path) -> str | None:
    f = root / "latest"
    if f.is_file():
        name = f.read_text().strip()
        return name or None
    return None


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint `latest` names, else the newest complete step directory, else None."""
    root = checkpoints_dir(run_dir)
    name = read_latest_name(root)
    if name and (root / name).is_dir():
        return root / name
    dirs = step_dirs(root)
    return dirs[-1] if dirs else None


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory from a run directory (its latest checkpoint) or a checkpoint dir."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is not None:
            return found
        raise FileNotFoundError(f"{p} has no checkpoint (expected {p}/checkpoints/step_*/ or a model.safetensors in it)")
    raise FileNotFoundError(f"checkpoint {p} does not exist")


# RNG state -------------------------------------------------------------------------------------
def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


# what load_policy reads ---------------------------------------------------------------------------
def write_policy_files(d: Path, spec, preprocess, postprocess, normalization: dict | None = None,
                       asset_hashes: dict | None = None, model=None, base_weights: str = "copy") -> None:
    """The inference half of a checkpoint, into folder `d`: model.safetensors (from `model`; a
    sharded engine gathers and writes its own), spec.yaml, graph.json (name, fingerprint, where the
    spec lived), normalization.json (when given), the pipelines and the files the blocks read
    (assets.py). base_weights='reference' (trainer.base_weights) leaves out of model.safetensors
    the frozen weights of the blocks whose base weight files assets.json references. Training
    writes its runs through this; load_policy reads them back."""
    from .assets import write_assets

    d = Path(d)
    manifest = write_assets(spec, d, asset_hashes)  # tokenizers, processors, configs: the run is self-contained
    if model is not None:
        from safetensors.torch import save_file, save_model

        if base_weights == "reference":
            left = left_to_base_files(model, referenced_blocks(manifest))
            save_file(_unique_tensors(model, left), str(d / "model.safetensors"), metadata={"format": "pt"})
        else:
            save_model(model, str(d / "model.safetensors"))  # tied tensors once; load_policy ties them again
    (d / "spec.yaml").write_text(spec.to_yaml())
    write_json(d / "graph.json", {"name": spec.name, "fingerprint": spec.fingerprint,
                                  "spec_file": str(Path(spec.file).resolve()) if spec.file else None})
    if normalization is not None:
        write_json(d / "normalization.json", normalization)
    write_pipelines(d, preprocess, postprocess)


def referenced_blocks(manifest: dict) -> set:
    """The blocks whose files in an assets.json manifest reference base weight files."""
    return {bid for bid, keys in manifest.items() if any(entry.get("referenced") for entry in keys.values())}


def left_to_base_files(model, blocks) -> set:
    """Names of the weights a base_weights='reference' checkpoint leaves to the base files of
    `blocks`: their frozen parameters (a frozen block's, a LoRA block's base), never an adapter or
    a trained tensor (added token rows train)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False)
            if n.split(".", 1)[0] in blocks and not p.requires_grad and ".lora_" not in n}


def weights_left_to_base_files(ckpt: Path, model) -> set:
    """For resuming: the names `model`'s weights that checkpoint `ckpt` leaves to referenced base
    files (their blocks were built from those files), after checking the files by sha256."""
    from .assets import check_references, read_manifest

    blocks = referenced_blocks(read_manifest(Path(ckpt)))
    for bid in blocks:
        check_references(ckpt, bid)
    return left_to_base_files(model, blocks)


def untied_names(model) -> list[str]:
    """model's state_dict names with each tied tensor under its first name only, as safetensors'
    save_model writes them (so `load_model(strict=True)` accepts the file)."""
    seen, names = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            names.append(name)
    return names


def _unique_tensors(model, leave_out) -> dict:
    """model's state, each tied tensor once, without `leave_out`."""
    state = model.state_dict(keep_vars=True)
    return {name: state[name].detach().contiguous() for name in untied_names(model) if name not in leave_out}


# processing pipelines ---------------------------------------------------------------------------
PIPELINES = ("preprocess", "postprocess")


def write_pipelines(d: Path, preprocess, postprocess) -> None:
    """preprocess.json, postprocess.json and their asset folders (statistics, tokenizers,
    processors) in checkpoint folder `d`: what serving, export and `graphvla check` run, as data."""
    for name, pipeline in zip(PIPELINES, (preprocess, postprocess)):
        if pipeline.name != name:
            raise ValueError(f"write_pipelines: got pipeline '{pipeline.name}' where '{name}' belongs")
        pipeline.save(d)


def read_pipelines(ckpt: Path, cg):
    """(preprocess, postprocess) of a checkpoint, bound as they were saved. A checkpoint written
    before pipelines were saved (only normalization.json) is migrated on read: the compiled graph's
    pipelines bound to its normalization.json (statistics and modes), checked against the graph."""
    from ..data.normalize import Normalizer
    from ..processors.base import Pipeline
    from ..processors.normalize import Normalize

    ckpt = Path(ckpt)
    normalizer = None
    if (ckpt / "preprocess.json").is_file():
        try:
            pipelines = tuple(Pipeline.load(ckpt, name) for name in PIPELINES)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {ckpt}: its pipelines do not load: {e}") from None
        step = pipelines[0].find(Normalize)
        normalizer = None if step is None else Normalizer.from_step(step)
    elif (ckpt / "normalization.json").is_file():
        normalizer = Normalizer.from_dict(read_json(ckpt / "normalization.json"))
    if normalizer is not None:
        try:
            normalizer.check_compatible(cg.spec)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {ckpt}: normalization does not match the graph's ports: {e}") from None
    if (ckpt / "preprocess.json").is_file():
        return pipelines
    if normalizer is None:
        return cg.bound_pipelines(None)
    return cg.bound_pipelines(normalizer.stats, normalizer.modes)
