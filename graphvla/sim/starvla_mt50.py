"""Meta-World MT50 exactly as starVLA evaluates it (protocol `starvla-mt50`).

The facts come from starVLA's evaluator and published table, kept as data in
`anchors/starvla_metaworld_mt50.json`:

- `gymnasium.make_vec("Meta-World/MT50", vector_strategy="sync", seed=4042, render_mode="rgb_array",
  camera_name="corner2")`; buckets easy, medium, hard, very_hard; tasks in the file's order; 10
  episodes per task.
- An episode: `reset(seed=4042 + episode)`, one zero action, then at most 400 steps; success when
  `info["success"] == 1`; actions clipped to the action space.
- The image: the corner2 frame rotated 180 degrees, its centre 2/3 kept, resized to the model's input.

Meta-World ignores the reset seed. Each of the vector env's 50 sub-environments is seeded with 4042
and draws its scene (one of the 50 object/goal variants `MT50(seed=4042)` generated for the task)
from its own generator on every reset. The sub-environments share nothing, so building the one
sub-environment of a task with make_vec's own arguments (`make_env`) and resetting it in episode
order gives exactly the protocol's scenes; tests/test_starvla_mt50.py checks that against make_vec.

Rendering: the frame is rendered at 1.5 x S so that the centre 2/3 crop is S x S and needs no
resampling (S is the graph's image size), with the plain rendering the recorder uses."""
from __future__ import annotations

import json
import os
import pickle
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from . import metaworld as mw

NAME = "starvla-mt50"
SEED = 4042
EPISODES = 10
MAX_STEPS = 400
CAMERA = "corner2"
BUCKETS = ("easy", "medium", "hard", "very_hard")
ANCHOR_FILE = "starvla_metaworld_mt50.json"
PEER_ROWS = {"la_finetune": "starVLA LA-pretrained finetune", "baseline_finetune": "starVLA baseline finetune"}
instruction = mw.instruction  # starVLA's client sends GraphVLA's Meta-World instructions (every protocol has one)


@lru_cache(maxsize=1)
def anchors() -> dict:
    """starVLA's protocol, buckets and published success rates (the anchors file, packaged)."""
    return json.loads(resources.files("graphvla.sim").joinpath("anchors", ANCHOR_FILE).read_text())


def bucket_tasks() -> dict[str, list[str]]:
    """bucket -> its tasks, both in the protocol's order."""
    per_task = anchors()["per_task"]
    return {b: [row["task"] for row in per_task[b]] for b in BUCKETS}


def tasks() -> list[str]:
    """The 50 tasks in evaluation order (bucket by bucket)."""
    return [t for b in BUCKETS for t in bucket_tasks()[b]]


def bucket_of(task: str) -> str:
    return mw.bucket_of_task(NAME, bucket_tasks(), task)


def peer_rates(task: str | None = None) -> dict[str, dict | float]:
    """starVLA's published rates: per bucket (+ overall) when task is None, else for that task."""
    a = anchors()
    if task is None:
        return {row: a["per_bucket"][row] for row in PEER_ROWS}
    for row in a["per_task"][bucket_of(task)]:
        if row["task"] == task:
            return {k: row[k] for k in PEER_ROWS}
    raise ValueError(task)


def select(buckets: list[str] | None = None, names: list[str] | None = None) -> list[str]:
    """The protocol's tasks restricted to `buckets` and/or `names`, kept in protocol order.
    Names may be bucket names, task names or MT10 (the protocol's tasks that MT10 also has)."""
    return mw.select_tasks(NAME, tasks(), {b: bucket_tasks()[b] for b in BUCKETS}, buckets, names)


# --- environments -----------------------------------------------------------------------------

def _cache_file() -> Path:
    import metaworld

    version = getattr(metaworld, "__version__", "unknown")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphvla"
    return root / f"metaworld-{version}-mt50-seed{SEED}-scenes.npz"


@lru_cache(maxsize=1)
def _benchmark() -> dict[str, np.ndarray]:
    """env name (in MT50's own order) -> its 50 scene vectors (rand_vec) [50, D], as
    `MT50(seed=4042)` generates them. Generating takes ~30 s (50 envs x 50 resets), so the vectors
    are cached on disk as plain arrays (read without pickle); `variants` rebuilds the Tasks."""
    path = _cache_file()
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {str(name): f[str(name)] for name in f["order"]}
        except Exception:  # noqa: BLE001  (a stale or torn cache is rebuilt)
            pass
    import metaworld

    bench = metaworld.MT50(seed=SEED)
    # Task.data is Meta-World's own pickle, made in this process just now: not untrusted input
    scenes = {name: np.stack([pickle.loads(t.data)["rand_vec"] for t in bench.train_tasks if t.env_name == name])
              for name in bench.train_classes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, order=np.array(list(scenes)), **scenes)
    tmp.replace(path)
    return scenes


def _order() -> list[str]:
    return list(_benchmark())


def scene_vectors(task: str) -> np.ndarray:
    """The 50 scene vectors [50, D] of `task` in the protocol's benchmark."""
    scenes = _benchmark()
    if task not in scenes:
        mw._check_task(task)
    return scenes[task]


@lru_cache(maxsize=64)
def variants(task: str) -> list:
    """The 50 scene variants of `task` as Meta-World Tasks, encoded as `MT50` encodes them
    (the task's MT50 kwargs without task_id, its rand_vec and class, MT's overrides)."""
    import metaworld

    _env_dict = metaworld._env_dict  # an attribute of the package, not an importable module
    out = []
    for rand_vec in scene_vectors(task):
        kwargs = dict(_env_dict.MT50_V3_ARGS_KWARGS[task]["kwargs"])
        del kwargs["task_id"]
        kwargs.update(rand_vec=rand_vec, env_cls=_env_dict.MT50_V3[task], **metaworld._MT_OVERRIDE)
        out.append(metaworld._encode_task(task, kwargs))
    return out


def render_size(size: int) -> int:
    """The frame side to render so that the centre 2/3 crop is exactly `size`."""
    if size % 2:
        raise ValueError(f"the {NAME} image size must be even (the 1.5x render crops to it exactly), got {size}")
    return size * 3 // 2


def make_env(task: str, size: int):
    """The protocol's sub-environment for `task`, built as make_vec builds it (seed 4042, its
    index in MT50, 50 tasks, corner2), rendering 1.5 x size frames without MSAA/shadows/reflections.
    Not reset yet: its first reset draws episode 0's scene."""
    import gymnasium  # noqa: F401
    import metaworld
    from metaworld import _init_each_env

    MT50_V3 = metaworld._env_dict.MT50_V3
    order = _order()
    side = render_size(size)
    env = _init_each_env(env_cls=MT50_V3[task], tasks=variants(task), seed=SEED, env_id=order.index(task),
                         num_tasks=len(order), render_mode="rgb_array", camera_name=CAMERA, width=side, height=side)
    mw._plain_rendering(env)
    return env


def start_episode(env, episode: int):
    """reset(seed=4042 + episode) (the scene comes from the env's generator), then the one zero
    action. Returns the observation after the zero action and the step's info."""
    env.reset(seed=SEED + int(episode))
    obs, _, _, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    return obs, info


def start_scene(env, variant: int):
    """Start the scene of variant `variant` (0..49) without drawing from the env's generator, then
    the zero action: how the recorder starts a demonstration."""
    selector = _task_selector(env)
    selector.toggle_sample_tasks_on_reset(False)
    env.unwrapped.set_task(variants(env_task(env))[variant])
    env.reset()
    obs, _, _, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    return obs, info


def _task_selector(env):
    e = env
    while not hasattr(e, "toggle_sample_tasks_on_reset"):
        e = e.env
    return e


def env_task(env) -> str:
    return _task_selector(env).tasks[0].env_name


def scene_of(env) -> int:
    """Which of the task's 50 variants the env's current episode started from."""
    current = env.unwrapped._last_rand_vec
    for i, vec in enumerate(scene_vectors(env_task(env))):
        if np.array_equal(vec, current):
            return i
    raise RuntimeError("the current scene is none of the benchmark's variants")


def scene_vector(env) -> list[float]:
    """The current scene's object/goal vector (Meta-World's rand_vec), JSON-able."""
    return [float(x) for x in env.unwrapped._last_rand_vec]


@lru_cache(maxsize=64)
def eval_scenes(task: str, episodes: int = EPISODES) -> tuple[int, ...]:
    """The variant index of each of the protocol's first `episodes` episodes of `task`, found by
    resetting a fresh protocol env in episode order (no rendering needed)."""
    env = make_env(task, size=2)
    try:
        out = []
        for ep in range(episodes):
            env.reset(seed=SEED + ep)
            out.append(scene_of(env))
        return tuple(out)
    finally:
        env.close()


def frame(env, size: int) -> np.ndarray:
    """The protocol's image, S x S uint8: the raw frame rotated 180 degrees and its centre 2/3
    kept. The env renders at 1.5 x S (`make_env`), so the crop is S x S and nothing is resampled;
    the data layer's `prepare_frame` then passes it through untouched."""
    viewer = env.unwrapped.mujoco_renderer._get_viewer("rgb_array")
    viewer.make_context_current()
    raw = env.render()
    side = render_size(size)
    if raw.shape[:2] != (side, side):
        raise ValueError(f"the env renders {raw.shape[1]}x{raw.shape[0]} frames; a {size}x{size} protocol image needs "
                         f"{side}x{side} (build it with make_env(task, {size}))")
    off = (side - size) // 2
    return np.ascontiguousarray(raw[::-1, ::-1][off:off + size, off:off + size])


def clip_action(env, action) -> np.ndarray:
    space = env.action_space
    return np.clip(np.asarray(action, dtype=np.float32), space.low, space.high)
