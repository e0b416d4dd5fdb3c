"""Meta-World as LeRobot evaluates it (protocol `lerobot-metaworld`), the protocol of the SmolVLA
paper and of Evo-1.

The facts come from LeRobot's `envs/metaworld.py`, its `metaworld_config.json` and `lerobot_eval.py`
(commit and URLs in `anchors/lerobot_metaworld.json`, which also holds the buckets, the task
descriptions and the published rows):

- One environment per task: `metaworld.MT1(task, seed=42)`, the task's class built with
  `render_mode="rgb_array", camera_name="corner2"`, `set_task(train_tasks[0])`, the corner2
  camera moved to (0.75, 0.075, 0.7), one `reset()`, then `_freeze_rand_vec = False` and
  `seeded_rand_vec = True`, so that each reset draws a new scene from the env's own generator.
- Episode i of every task: `env.seed(1000 + i)` then `env.reset(seed=1000 + i)` (lerobot_eval's
  default seed 1000, one more per episode); no extra action; at most 500 steps (the env's
  `_max_episode_steps`, which the rollout reads); success when `info["success"]` is true at some
  step (the env ends the episode there). Actions reach `env.step` unclipped.
- Observation: the corner2 frame flipped on both axes; the state is `obs[:4]` (hand xyz +
  gripper); the instruction is LeRobot's task description.
- 10 episodes per task; buckets easy (28), medium (11), hard (6), very_hard (5); the published
  figure is the mean of the four bucket rates.

A scene is therefore a function of the reset seed alone: `start_scene(env, seed)` reseeds and
resets, whatever the env did before. Evaluation uses seeds 1000..1000+episodes-1; recording uses
seeds below 1000, then from 2000 on, so it never starts from an evaluation scene.

Differences from LeRobot (also in the anchors file and docs/protocols.md): the frame is rendered
directly at the graph's image size S (LeRobot renders 480 x 480 and lets the policy's processor
resize it), with the recorder's plain rendering (no MSAA, shadows or reflections); LeRobot pins
metaworld 3.0.0, GraphVLA uses the installed version (written to results.json)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

from . import metaworld as mw

NAME = "lerobot-metaworld"
SEED = 1000  # lerobot_eval's default --seed; episode i resets with SEED + i
EPISODES = 10
MAX_STEPS = 500  # MetaworldEnv._max_episode_steps
CAMERA = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)  # LeRobot moves camera 2 (corner2) here
MT1_SEED = 42
BUCKETS = ("easy", "medium", "hard", "very_hard")
ANCHOR_FILE = "lerobot_metaworld.json"
RESERVED = 1000  # seeds SEED .. SEED+RESERVED-1 are kept for evaluation (up to 1000 episodes per task)


@lru_cache(maxsize=1)
def anchors() -> dict:
    """LeRobot's buckets, task descriptions and the published rows (the anchors file, packaged)."""
    return json.loads(resources.files("graphvla.sim").joinpath("anchors", ANCHOR_FILE).read_text())


def _peer_rows() -> dict[str, str]:
    return {key: row["name"] for key, row in anchors()["published"].items()}


PEER_ROWS = _peer_rows()


def bucket_tasks() -> dict[str, list[str]]:
    """bucket -> its tasks, in LeRobot's order."""
    return {b: list(anchors()["bucket_tasks"][b]) for b in BUCKETS}


def tasks() -> list[str]:
    """The 50 tasks in evaluation order (bucket by bucket, LeRobot's order)."""
    return [t for b in BUCKETS for t in bucket_tasks()[b]]


def bucket_of(task: str) -> str:
    return mw.bucket_of_task(NAME, bucket_tasks(), task)


def instruction(task: str) -> str:
    """LeRobot's task description, the instruction its policies get."""
    try:
        return anchors()["task_descriptions"][task]
    except KeyError:
        raise ValueError(f"'{task}' is not a task of the {NAME} protocol") from None


def peer_rates(task: str | None = None) -> dict:
    """The published rates per bucket (+ overall) when task is None; for one task None per row
    (the papers publish bucket means only)."""
    published = anchors()["published"]
    if task is None:
        return {key: {b: row[b] for b in (*BUCKETS, "overall")} for key, row in published.items()}
    bucket_of(task)
    return {key: None for key in published}


def select(buckets: list[str] | None = None, names: list[str] | None = None) -> list[str]:
    """The protocol's tasks restricted to `buckets` and/or `names` (bucket names, task names, MT10
    or MT50), kept in protocol order."""
    return mw.select_tasks(NAME, tasks(), {b: bucket_tasks()[b] for b in BUCKETS}, buckets, names)


# --- environments -----------------------------------------------------------------------------

def make_env(task: str, size: int):
    """The protocol's environment for `task`, built as LeRobot's MetaworldEnv builds it, rendering
    S x S frames (S = size) with the plain rendering. Ready for `start_episode` / `start_scene`."""
    import metaworld

    if task not in tasks():
        bucket_of(task)
    size = int(size)
    if size < 1:
        raise ValueError(f"the {NAME} image size must be positive, got {size}")
    mt1 = metaworld.MT1(task, seed=MT1_SEED)
    env = mt1.train_classes[task](render_mode="rgb_array", camera_name=CAMERA, width=size, height=size)
    mw._plain_rendering(env)
    env.set_task(mt1.train_tasks[0])
    env.model.cam_pos[2] = list(CAMERA_POS)
    env.reset()
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env.graphvla_task = task
    return env


def start_scene(env, seed: int):
    """Reseed and reset as LeRobot's MetaworldEnv.reset(seed) does: the scene is a function of the
    seed alone. Returns (obs, info)."""
    seed = int(seed)
    env.seed(seed)
    obs, info = env.reset(seed=seed)
    env.graphvla_seed = seed
    return obs, info


def start_episode(env, episode: int):
    """Episode `episode` of the protocol: the scene of seed 1000 + episode."""
    return start_scene(env, SEED + int(episode))


def env_task(env) -> str:
    return env.graphvla_task


def scene_of(env) -> int:
    """The reset seed the current episode started from (it names the scene)."""
    seed = getattr(env, "graphvla_seed", None)
    if seed is None:
        raise RuntimeError("no episode started (use start_episode or start_scene)")
    return seed


def scene_vector(env) -> list[float]:
    """The current scene's object/goal vector (Meta-World's rand_vec), JSON-able."""
    return [float(x) for x in env.unwrapped._last_rand_vec]


def eval_scenes(task: str, episodes: int = EPISODES) -> tuple[int, ...]:
    """The seeds of the protocol's first `episodes` episodes of `task` (the same for every task)."""
    bucket_of(task)
    return tuple(range(SEED, SEED + int(episodes)))


def recording_scenes(task: str, count: int) -> list[int]:
    """`count` seeds for demonstrations of `task`, in order: 0..999, then from 2000 on; never one
    of the seeds evaluation uses with up to RESERVED episodes per task."""
    bucket_of(task)
    below = list(range(min(int(count), SEED)))
    return below + list(range(SEED + RESERVED, SEED + RESERVED + int(count) - len(below)))


def frame(env, size: int) -> np.ndarray:
    """The protocol's image, S x S uint8: the corner2 frame flipped on both axes (as LeRobot
    flips it), rendered at S x S (`make_env`)."""
    viewer = env.unwrapped.mujoco_renderer._get_viewer("rgb_array")
    viewer.make_context_current()
    raw = env.render()
    if raw.shape[:2] != (size, size):
        raise ValueError(f"the env renders {raw.shape[1]}x{raw.shape[0]} frames; a {size}x{size} protocol image needs "
                         f"an env built with make_env(task, {size})")
    return np.ascontiguousarray(np.flip(raw, (0, 1)))


def clip_action(env, action) -> np.ndarray:
    """LeRobot passes the policy's action to env.step unclipped: only the dtype is fixed here."""
    return np.asarray(action, dtype=np.float32)


def metaworld_version() -> str:
    from importlib.metadata import version

    return version("metaworld")
