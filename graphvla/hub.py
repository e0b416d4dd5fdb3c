"""Hugging Face Hub ids wherever GraphVLA takes a path: `org/name` or `org/name@revision`.

A value is read in this order:
1. a local path that exists (relative to the spec's or the data YAML's folder, or the current
   folder for command-line arguments) always wins, so a folder named `org/name` beside the spec
   is read as it is;
2. otherwise a value shaped like a Hub id - exactly one '/', both parts made of letters, digits,
   '-', '_' and '.' (starting and ending with a letter or digit, no '--' or '..'), so no leading
   './', '../', '/' or '~'; not ending in .yaml/.yml/.json; optionally '@revision' (a branch, a
   tag or a 40-hex commit) - is resolved through huggingface_hub's cache to a snapshot folder: with HF_HUB_OFFLINE=1 only the
   cache is read; online, huggingface_hub fetches what the cache lacks;
3. anything else keeps the caller's own "not found" error.

The cache is huggingface_hub's, read when the value is resolved (not when the module is
imported): HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
~/.cache/huggingface/hub. An id that cannot be resolved raises HubError (a FileNotFoundError)
naming the id, the revision, the cache folder and HF_HUB_OFFLINE; nothing is written when it
fails offline."""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_ID = re.compile(rf"(?P<org>{_PART})/(?P<name>{_PART})(?:@(?P<revision>[^\s@]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
REPO_TYPES = {"model": "models", "dataset": "datasets"}
FILE_SUFFIXES = (".yaml", ".yml", ".json")  # `configs/data.yaml` is a file, never an id
WEIGHT_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx"]


class HubError(FileNotFoundError):
    """A Hub id that neither the cache nor the Hub can give; the message names the id, the
    revision, the cache folder and HF_HUB_OFFLINE."""


@dataclass(frozen=True)
class HubId:
    repo_id: str  # 'org/name'
    revision: str | None = None  # a branch, a tag or a commit; None: the default branch (main)

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_id(value) -> HubId | None:
    """The Hub id `value` is shaped like, or None (a path, or neither)."""
    if not isinstance(value, str):
        return None
    m = _ID.fullmatch(value.strip())
    if m is None:
        return None
    org, name, revision = m["org"], m["name"], m["revision"]
    if any(s in part for part in (org, name) for s in ("--", "..")) or name.lower().endswith(FILE_SUFFIXES):
        return None
    if revision is not None and (revision.startswith("/") or ".." in revision.split("/")):
        return None
    return HubId(f"{org}/{name}", revision)


def cache_dir() -> Path:
    """huggingface_hub's cache folder, from the environment as it is now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/ON/YES/TRUE), read now."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def repo_folder(repo_id: str, repo_type: str = "model", cache: Path | None = None) -> Path:
    """cache/models--org--name (or datasets--org--name): where the cache keeps one repository."""
    return (cache or cache_dir()) / f"{REPO_TYPES[repo_type]}--{repo_id.replace('/', '--')}"


def resolve(value, *, base=None, repo_type: str = "model", weights: bool = True) -> Path:
    """The local file or folder `value` names: an existing path (relative to `base`) wins; a Hub
    id gives its snapshot folder in the cache; anything else the local path as given (which does
    not exist: the caller's own error). weights=False fetches no weight file (compiling on meta
    needs only configs and tokenizers)."""
    path = Path(str(value)).expanduser()
    local = path if path.is_absolute() or base is None else Path(base) / path
    if local.exists():
        return local
    ref = parse_id(str(value))
    if ref is None:
        return local
    return snapshot(ref, repo_type, local=local, weights=weights)


def is_hub_value(value, base=None) -> bool:
    """Whether `value` is read as a Hub id (shaped like one, and no such local path)."""
    if parse_id(value) is None:
        return False
    path = Path(value).expanduser()
    return not (path if path.is_absolute() or base is None else Path(base) / path).exists()


def cached_snapshot(value, repo_type: str = "model") -> Path | None:
    """The snapshot folder of Hub id `value` if the cache holds it (never downloads), else None."""
    ref = parse_id(value)
    if ref is None:
        return None
    storage = repo_folder(ref.repo_id, repo_type)
    commit = _cached_commit(storage, ref.revision or "main")
    folder = storage / "snapshots" / commit if commit else None
    return folder if folder is not None and folder.is_dir() else None


def snapshot(ref: HubId, repo_type: str = "model", *, local: Path | None = None, weights: bool = True) -> Path:
    """The snapshot folder of `ref` through huggingface_hub (the cache only with HF_HUB_OFFLINE=1)."""
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type must be one of {', '.join(REPO_TYPES)}, got '{repo_type}'")
    cache = cache_dir()
    storage = repo_folder(ref.repo_id, repo_type, cache)
    no_local = f"; no local path {local} either" if local is not None else ""
    if offline():
        _check_cached(ref, repo_type, cache, storage, no_local)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise HubError(f"Hugging Face {repo_type} '{ref}' needs the package huggingface_hub (pip install "
                       f"huggingface_hub){no_local}") from None
    try:
        folder = snapshot_download(ref.repo_id, repo_type=repo_type, revision=ref.revision, cache_dir=str(cache),
                                   local_files_only=offline(), ignore_patterns=None if weights else WEIGHT_PATTERNS)
    except hf_errors.RevisionNotFoundError:
        raise HubError(f"Hugging Face {repo_type} '{ref.repo_id}' has no revision '{ref.revision}' on the Hub "
                       f"(cache: {cache}){no_local}") from None
    except hf_errors.RepositoryNotFoundError as e:  # GatedRepoError included
        gated = isinstance(e, getattr(hf_errors, "GatedRepoError", ()))
        why = ("is gated: accept its terms on huggingface.co and log in (hf auth login)" if gated
               else "does not exist on the Hub (or is private: log in with hf auth login)")
        raise HubError(f"Hugging Face {repo_type} '{ref.repo_id}' {why}; cache: {cache}{no_local}") from None
    except (OSError, ValueError) as e:  # not in the cache and the Hub unreachable, an incomplete snapshot, ...
        raise HubError(f"Hugging Face {repo_type} '{ref}' could not be resolved: it is not (completely) in the cache "
                       f"{cache} and {'HF_HUB_OFFLINE=1 forbids downloading' if offline() else 'the Hub could not give it'}"
                       f" ({type(e).__name__}: {_first_line(e)}){no_local}. Download it once online "
                       f"({_download_hint(ref, repo_type)}), or set HF_HUB_OFFLINE=1 to use only the cache") from None
    return Path(folder)


def _check_cached(ref: HubId, repo_type: str, cache: Path, storage: Path, no_local: str) -> None:
    """Offline: a clear error when the cache lacks the repository or the revision."""
    if not storage.is_dir():
        raise HubError(f"Hugging Face {repo_type} '{ref.repo_id}' is not in the Hub cache {cache} and "
                       f"HF_HUB_OFFLINE=1 forbids downloading it{no_local}{_did_you_mean(ref, repo_type, cache)}. "
                       f"Download it once online ({_download_hint(ref, repo_type)}), or point HF_HUB_CACHE / HF_HOME "
                       "at the cache that holds it")
    revision = ref.revision or "main"
    commit = _cached_commit(storage, revision)
    if commit is None or not (storage / "snapshots" / commit).is_dir():
        raise HubError(f"Hugging Face {repo_type} '{ref.repo_id}': revision '{revision}' is not in the Hub cache "
                       f"{storage} and HF_HUB_OFFLINE=1 forbids downloading it (cached: "
                       f"{_cached_revisions(storage) or 'nothing'}). Download it once online "
                       f"({_download_hint(HubId(ref.repo_id, revision), repo_type)})")


def _cached_commit(storage: Path, revision: str) -> str | None:
    if _COMMIT.fullmatch(revision):
        return revision
    ref = storage / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def _cached_revisions(storage: Path) -> str:
    refs = storage / "refs"
    names = sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    snaps = sorted(p.name for p in (storage / "snapshots").iterdir()) if (storage / "snapshots").is_dir() else []
    parts = ([f"refs {', '.join(names)}"] if names else []) + ([f"commits {', '.join(snaps)}"] if snaps else [])
    return "; ".join(parts)


def _did_you_mean(ref: HubId, repo_type: str, cache: Path) -> str:
    prefix = f"{REPO_TYPES[repo_type]}--"
    cached = [p.name[len(prefix):].replace("--", "/", 1) for p in cache.glob(prefix + "*")] if cache.is_dir() else []
    hint = difflib.get_close_matches(ref.repo_id, cached, n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def _download_hint(ref: HubId, repo_type: str) -> str:
    return ("hf download " + ref.repo_id + (f" --revision {ref.revision}" if ref.revision else "")
            + (f" --repo-type {repo_type}" if repo_type != "model" else ""))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
