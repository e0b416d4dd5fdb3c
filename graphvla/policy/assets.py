"""Self-contained checkpoints: the files a spec's blocks read from disk travel with the run.

Every `with:` value of a block that names an existing file or folder (relative to the spec's
folder, or absolute) - a VLM's `model` / `processor` folder (config, tokenizer, processor, chat
template), a FAST `tokenizer` folder, a config file, or a Hugging Face Hub id (`org/name[@revision]`)
whose snapshot the blocks were built from - is copied into the checkpoint under
`assets/<block>/<key>/`, and `assets.json` records where each came from
(for a Hub id also its repo id, revision and commit). `load_policy` reads the
copies, so a run folder moved to another machine, or whose spec folder is gone, still loads.

Large weight files (a base model's *.safetensors / *.bin above REFERENCE_ABOVE_BYTES, 256 MiB
unless GRAPHVLA_REFERENCE_WEIGHTS_ABOVE_MB says otherwise) are not copied: they are referenced by
absolute path, byte size and sha256 (a symlink stands in their place in the copied folder). A
checkpoint whose model.safetensors holds every weight of the block never reads them (load_policy
builds on meta and takes every tensor from the checkpoint). One that lacks some of a block's weights
(a frozen base kept by reference) rebuilds that block from them: when one is missing or changed,
loading fails naming the file, the block key and the expected sha256."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import hub
from ..fileio import sha256_of

ASSETS_DIR = "assets"
MANIFEST = "assets.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
REFERENCE_ABOVE_BYTES = int(float(os.environ.get("GRAPHVLA_REFERENCE_WEIGHTS_ABOVE_MB", 256)) * 2**20)


def path_params(spec):
    """(block id, key, value, resolved path) of every `with:` string that names a file or folder:
    a local path, or a Hugging Face Hub id whose snapshot is in the Hub cache (the blocks were
    built from it, so it is there; nothing is downloaded here)."""
    for bid, block in (spec.blocks or {}).items():
        for key, value in ((block or {}).get("with") or {}).items():
            if not isinstance(value, str) or not value.strip():
                continue
            p = Path(value).expanduser()
            p = p if p.is_absolute() else spec.dir / p
            if p.exists():
                yield bid, key, value, p.resolve()
            elif hub.is_hub_value(value, spec.dir) and (snap := hub.cached_snapshot(value)) is not None:
                yield bid, key, value, snap


def _referenced(f: Path) -> bool:
    return f.suffix in WEIGHT_SUFFIXES and f.stat().st_size > REFERENCE_ABOVE_BYTES


def write_assets(spec, ckpt_dir: Path, cache: dict | None = None) -> dict:
    """Copy the spec's files into ckpt_dir/assets and return the manifest (also written as assets.json)."""
    manifest = {}
    for bid, key, value, src in path_params(spec):
        dest = Path(ASSETS_DIR) / bid / key
        entry = {"value": value, "source": str(src), "referenced": []}
        if hub.is_hub_value(value, spec.dir):  # the Hub id and the commit its files came from
            entry["hub"] = {"repo_id": hub.parse_id(value).repo_id, "revision": hub.parse_id(value).revision,
                            "commit": src.name}
        root = ckpt_dir / dest
        if src.is_file():
            root.mkdir(parents=True, exist_ok=True)
            files, entry["path"] = [(src, src.name)], str(dest / src.name)
        else:
            files = [(f, f.relative_to(src).as_posix()) for f in sorted(src.rglob("*")) if f.is_file()]
            root.mkdir(parents=True, exist_ok=True)
            entry["path"] = str(dest)
        for f, rel in files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if _referenced(f):
                entry["referenced"].append({"file": rel, "source": str(f), "bytes": f.stat().st_size,
                                            "sha256": sha256_of(f, cache)})
                os.symlink(f, target)
            else:
                shutil.copy2(f, target)
        manifest.setdefault(bid, {})[key] = entry
    (ckpt_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # checkpoint.py writes through this module
    return manifest


def read_manifest(ckpt: Path) -> dict:
    return json.loads((ckpt / MANIFEST).read_text()) if (ckpt / MANIFEST).is_file() else {}


def localized_values(ckpt: Path) -> dict:
    """{(block id, key): absolute path of its copy} from a checkpoint's assets.json (empty for
    checkpoints written before assets were copied). Referenced weight files are not read here:
    a checkpoint that holds every weight loads without them (check_references when it does not)."""
    ckpt = Path(ckpt)
    return {(bid, key): str((ckpt / entry["path"]).resolve())
            for bid, keys in read_manifest(ckpt).items() for key, entry in keys.items()}


def has_references(ckpt: Path, bid: str) -> bool:
    """Whether block `bid`'s files in the checkpoint reference base weights kept outside it."""
    return any(entry.get("referenced") for entry in read_manifest(Path(ckpt)).get(bid, {}).values())


def check_references(ckpt: Path, bid: str) -> None:
    """Check (path, size, sha256) every base weight file block `bid` references; raises naming the
    file, the block key and the expected sha256 when one is missing or changed."""
    ckpt = Path(ckpt)
    for key, entry in read_manifest(ckpt).get(bid, {}).items():
        for ref in entry.get("referenced", []):
            _check_reference(ckpt, bid, key, ref)


def _check_reference(ckpt: Path, bid: str, key: str, ref: dict) -> None:
    src = Path(ref["source"])
    where = f"blocks.{bid}.with.{key}"
    if not src.is_file():
        raise FileNotFoundError(
            f"checkpoint {ckpt}: the base weights {src} (sha256 {ref['sha256']}, {ref['bytes']} bytes) that {where} "
            "references are missing. The run keeps large base weights by path and hash instead of copying them: "
            "restore that file (same content) or set GRAPHVLA_REFERENCE_WEIGHTS_ABOVE_MB higher when training to copy them")
    if src.stat().st_size != ref["bytes"] or sha256_of(src) != ref["sha256"]:
        raise ValueError(f"checkpoint {ckpt}: the base weights {src} that {where} references have changed since "
                         f"training (expected sha256 {ref['sha256']}, {ref['bytes']} bytes); restore the original file")
