"""`graphvla data metaworld`: record Meta-World's scripted experts into a LeRobot dataset (v2.1, or
v3.0 with `--format v3.0`; graphvla/data/lerobot_write.py).

Only successful episodes are kept (the count of failures is reported and saved in info.json).
Episode e of task k uses env seed `seed + 1000 * k + attempt`; the seeds are written to
the episodes' metadata (meta/episodes.jsonl, or meta/episodes/ in v3.0) so an evaluation can pick
disjoint ones (see `recorded_seeds`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import prepare_frame

SEED_STRIDE = 1000  # seeds of different tasks never overlap while episodes per task < 1000


@dataclass
class RecordSummary:
    root: str
    episodes: int = 0
    frames: int = 0
    failed: dict = field(default_factory=dict)  # task -> failed expert attempts
    per_task: dict = field(default_factory=dict)  # task -> kept episodes


def record_metaworld(out, tasks, episodes: int, size: int = 128, camera: str = "corner", seed: int = 0,
                     max_attempts: int | None = None, progress=None, format: str = "v2.1",
                     video: bool = False) -> RecordSummary:
    """Record `episodes` successful expert episodes of each task into `out`.

    max_attempts: per task, give up after this many tries (default 3 x episodes + 5).
    format: the LeRobot version written, 'v2.1' (LeRobot 0.3.x) or 'v3.0' (LeRobot >= 0.4).
    video: store the camera as H.264 video (lossy) instead of PNG frames (lossless)."""
    from ..sim import metaworld as mw
    from .lerobot_write import LeRobotWriter

    tasks = list(tasks)
    for t in tasks:
        mw._check_task(t)
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    writer = LeRobotWriter(out, fps=80, robot_type="sawyer", version=format, features=recorded_features(camera, size),
                           video=video)
    summary = RecordSummary(str(out))
    max_attempts = max_attempts or 3 * episodes + 5
    for k, task in enumerate(tasks):
        env = mw.make_env(task, seed=seed + SEED_STRIDE * k, size=size, camera=camera)
        kept = failed = attempt = 0
        try:
            while kept < episodes and attempt < max_attempts:
                ep_seed = seed + SEED_STRIDE * k + attempt
                attempt += 1
                frames, success = _rollout(env, task, ep_seed, camera, mw, size)
                if not success:
                    failed += 1
                    continue
                writer.add_episode(frames, mw.INSTRUCTIONS[task], {"seed": ep_seed, "env_task": task, "success": True})
                kept += 1
                summary.frames += len(frames["action"])
                if progress:
                    progress(task, kept, len(frames["action"]))
        finally:
            env.close()
        summary.failed[task] = failed
        summary.per_task[task] = kept
        summary.episodes += kept
    if summary.episodes == 0:
        raise RuntimeError(f"no successful expert episode in {sum(summary.failed.values())} attempts; nothing written")
    writer.finalize({"graphvla": {"source": "metaworld", "camera": camera, "image_size": size, "seed": seed,
                                  "tasks": tasks, "failed_episodes": summary.failed,
                                  "state": "hand xyz + gripper opening (obs[0:4])"}})
    return summary


def _rollout(env, task, ep_seed, camera, mw, size: int):
    """One expert episode; stops at the first successful step (the success frame is kept).
    Frames go through the one image path at the recorded size (the env renders at that size,
    so this only guarantees what info.json declares)."""
    obs, _ = mw.reset_env(env, ep_seed)
    cols = {k: [] for k in ("image", "state", "env", "action", "reward", "success")}
    success = False
    for _ in range(mw.max_steps(env)):
        action = mw.expert_action(task, obs)
        cols["image"].append(prepare_frame(mw.render(env), (size, size)))
        cols["state"].append(mw.robot_state(obs))
        cols["env"].append(np.asarray(obs, dtype=np.float32))
        cols["action"].append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        success = bool(info.get("success", 0.0) >= 1.0)
        cols["reward"].append(np.float32(reward))
        cols["success"].append(success)
        if success or truncated:
            break
    return episode_frames(cols, camera), success


def recorded_features(camera: str, size: int) -> dict:
    """The LeRobot features both recorders write: key -> (dtype, shape, names)."""
    from ..sim import metaworld as mw

    return {
        f"observation.images.{camera}": ("image", (size, size, 3), None),
        "observation.state": ("float32", (mw.STATE_DIM,), ["hand_x", "hand_y", "hand_z", "gripper"]),
        "observation.environment_state": ("float32", (mw.OBS_DIM,), [f"obs_{i}" for i in range(mw.OBS_DIM)]),
        "action": ("float32", (mw.ACTION_DIM,), ["delta_x", "delta_y", "delta_z", "gripper"]),
        "next.reward": ("float32", (1,), ["reward"]),
        "next.success": ("bool", (1,), ["success"]),
    }


def episode_frames(cols: dict, camera: str) -> dict:
    """An expert rollout's per-step lists (image, state, env, action, reward, success) as the
    LeRobot feature columns both recorders write."""
    return {
        f"observation.images.{camera}": np.stack(cols["image"]),
        "observation.state": np.stack(cols["state"]),
        "observation.environment_state": np.stack(cols["env"]),
        "action": np.stack(cols["action"]),
        "next.reward": np.asarray(cols["reward"], dtype=np.float32)[:, None],
        "next.success": np.asarray(cols["success"], dtype=bool)[:, None],
    }


def recorded_seeds(root) -> dict[str, list[int]]:
    """task -> env seeds used by the recorded episodes (evaluate on other seeds)."""
    from .lerobot import read_episode_records

    out: dict[str, list[int]] = {}
    for e in read_episode_records(root):
        if e.get("seed") is not None:
            out.setdefault(e.get("env_task") or e["tasks"][0], []).append(int(e["seed"]))
    return out


def tiny_metaworld(base, tasks=("reach-v3", "push-v3"), episodes: int = 2, size: int = 64) -> Path:
    """A small recorded dataset under `base`, recorded once and reused (tests, benchmarks)."""
    root = Path(base) / f"metaworld-{'-'.join(tasks)}-{episodes}x{size}"
    if not (root / "meta" / "info.json").exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        record_metaworld(root, list(tasks), episodes, size=size)
    return root
