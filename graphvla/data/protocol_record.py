"""`graphvla data metaworld --protocol starvla-mt50|lerobot-metaworld`: scripted-expert
demonstrations for a protocol, through the protocol's own environments and camera pipeline.

- Scenes: each task's 50 benchmark variants minus the ones the protocol's evaluation episodes start
  from (`starvla_mt50.eval_scenes`), in variant order; an expert that fails a scene is discarded and
  the next scene is tried. The expert is deterministic, so a scene gives one demonstration at most.
- Frames: `starvla_mt50.frame` (corner2, rotated 180 degrees, centre 2/3 at S x S) after the same
  reset and zero action an evaluation episode starts with.
- Parallel and resumable: each task is recorded into its own complete dataset under
  `OUT/.parts/<task>/` by one of `workers` processes (a task whose part has meta/info.json is done;
  a torn part is recorded again); when every task is done the parts are merged, in protocol order,
  into one LeRobot v2.1 dataset at OUT and the parts are removed.

With `lerobot-metaworld` a scene is a reset seed (`lerobot_metaworld.recording_scenes`: 0, 1, ...,
never one of the seeds its evaluation uses), the instruction is LeRobot's task description and the
frames are `lerobot_metaworld.frame` after the same reseed and reset an evaluation episode starts
with. The protocol is written to meta/info.json; `check_recording_protocol` refuses a recording
made for another protocol."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..fileio import write_text_atomic
from .lerobot_write import check_format

PARTS = ".parts"
FPS = 80  # Meta-World's control rate (frame_skip 5 x 2.5 ms)
DEFAULT_PROTOCOL = "starvla-mt50"


def _module(protocol: str | None):
    from ..sim import protocol_module

    return protocol_module(protocol or DEFAULT_PROTOCOL)


def _scenes(P, task: str, episodes: int) -> tuple[list[int], list[int]]:
    """(scenes to try in order, the scenes evaluation starts from) for `task` of protocol P."""
    if hasattr(P, "recording_scenes"):  # scenes named by seeds: as many as the expert may need
        return P.recording_scenes(task, 2 * episodes + 10), list(P.eval_scenes(task))
    held_out = set(P.eval_scenes(task))
    return [v for v in range(len(P.variants(task))) if v not in held_out], sorted(held_out)


def features(size: int, protocol: str | None = None) -> dict:
    from .metaworld_record import recorded_features

    return recorded_features(_module(protocol).CAMERA, size)


def record_task(part: Path, task: str, episodes: int, size: int, position: int = 0, progress: bool = True,
                protocol: str | None = None) -> dict:
    """Record up to `episodes` successful demonstrations of `task` into the dataset `part`."""
    import warnings

    from tqdm import tqdm

    from .lerobot_write import LeRobotWriter

    P = _module(protocol)
    warnings.filterwarnings("ignore", module="gymnasium")
    shutil.rmtree(part, ignore_errors=True)  # a part without info.json was cut off: start it again
    scenes, held_out = _scenes(P, task, episodes)
    writer = LeRobotWriter(part, fps=FPS, robot_type="sawyer", features=features(size, P.NAME))
    env = P.make_env(task, size)
    kept, failed = 0, []
    bar = tqdm(total=episodes, desc=f"{task:<28}", position=position, leave=False, disable=not progress)
    try:
        for v in scenes:
            if kept == episodes:
                break
            frames, success = _rollout(env, task, v, size, P.NAME)
            if not success:
                failed.append(v)
                continue
            writer.add_episode(frames, P.instruction(task), {
                "env_task": task, "variant": v, "scene": P.scene_vector(env), "protocol": P.NAME, "success": True})
            kept += 1
            bar.update(1)
    finally:
        bar.close()
        env.close()
    if kept == 0:
        raise RuntimeError(f"{task}: the scripted expert failed every scene it tried ({failed})")
    writer.finalize({"graphvla": {"task": task, "failed_variants": failed, "held_out_variants": sorted(held_out)}})
    return {"task": task, "episodes": kept, "failed": failed, "available": len(scenes)}


def _rollout(env, task: str, variant: int, size: int, protocol: str | None = None):
    """One expert episode from scene `variant`, stopped at its first successful step (kept)."""
    from ..sim import metaworld as mw
    from .metaworld_record import episode_frames

    P = _module(protocol)
    obs, _ = P.start_scene(env, variant)
    cols = {k: [] for k in ("image", "state", "env", "action", "reward", "success")}
    success = False
    for _ in range(P.MAX_STEPS):
        action = P.clip_action(env, mw.expert_action(task, obs))
        cols["image"].append(P.frame(env, size))
        cols["state"].append(mw.robot_state(obs))
        cols["env"].append(np.asarray(obs, dtype=np.float32))
        cols["action"].append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        success = info.get("success", 0.0) == 1.0
        cols["reward"].append(np.float32(reward))
        cols["success"].append(success)
        if success or terminated or truncated:
            break
    return episode_frames(cols, P.CAMERA), success


def _work(args):
    part, task, episodes, size, position, progress, protocol = args
    return record_task(Path(part), task, episodes, size, position, progress, protocol)


def record_protocol(out, tasks: list[str], episodes: int, size: int, workers: int = 1, progress: bool = True,
                    log=print, protocol: str | None = None, format: str = "v2.1", video: bool = False) -> dict:
    """Record every task of `tasks` (protocol names) into OUT; resumable; returns a summary."""
    P = _module(protocol)

    out = Path(out)
    if (out / "meta" / "info.json").exists():
        raise ValueError(f"{out} already holds a dataset (meta/info.json); choose a new folder")
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    check_format(format)  # before hours of recording, not at the merge
    size = int(size)
    if video and size % 2:
        raise ValueError(f"--video needs an even --size (H.264 in yuv420p), got {size}")
    if hasattr(P, "render_size"):
        P.render_size(size)  # an odd size fails here, before any process starts
    elif size < 1:
        raise ValueError(f"--size must be at least 1, got {size}")
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    settings = {"protocol": P.NAME, "episodes": episodes, "size": size}
    settings_file = parts / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise ValueError(f"{out} holds an interrupted recording made with {settings_file.read_text().strip()}; "
                         f"resume with those options or choose a new folder")
    write_text_atomic(settings_file, json.dumps(settings))
    if hasattr(P, "_benchmark"):
        P._benchmark()  # build the variant cache once, before the workers read it
    todo = [t for t in tasks if not (parts / t / "meta" / "info.json").exists()]
    if len(todo) < len(tasks):
        log(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} task(s) already recorded")
    jobs = [(str(parts / t), t, episodes, size, i % max(workers, 1), progress, P.NAME) for i, t in enumerate(todo)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap_unordered(_work, jobs):
                log(f"  {r['task']}: {r['episodes']} episode(s)" + (f", expert failed {len(r['failed'])}" if r["failed"] else ""))
    else:
        for job in jobs:
            r = _work(job)
            log(f"  {r['task']}: {r['episodes']} episode(s)" + (f", expert failed {len(r['failed'])}" if r["failed"] else ""))
    return merge_parts(out, tasks, size, P.NAME, format, video)


def merge_parts(out: Path, tasks: list[str], size: int, protocol: str | None = None, format: str = "v2.1",
                video: bool = False) -> dict:
    """Concatenate the finished per-task parts (in `tasks` order) into one dataset at `out`."""
    import pyarrow.parquet as pq

    from .lerobot_write import CHUNKS_SIZE, DATA_PATH, LeRobotWriter

    P = _module(protocol)
    parts = out / PARTS
    writer = LeRobotWriter(out, fps=FPS, robot_type="sawyer", features=features(size, P.NAME), version=format,
                           video=video)
    per_task, failed, held_out = {}, {}, {}
    for task in tasks:
        part = parts / task
        info = json.loads((part / "meta" / "info.json").read_text())
        failed[task] = info["graphvla"]["failed_variants"]
        held_out[task] = info["graphvla"]["held_out_variants"]
        episodes = [json.loads(line) for line in (part / "meta" / "episodes.jsonl").read_text().splitlines() if line]
        stats = [json.loads(line) for line in (part / "meta" / "episodes_stats.jsonl").read_text().splitlines() if line]
        for meta, st in zip(episodes, stats):  # the parts are v2.1; frames and values are copied as they are
            src_ep = meta["episode_index"]
            table = pq.read_table(part / DATA_PATH.format(episode_chunk=src_ep // CHUNKS_SIZE, episode_index=src_ep))
            extra = {k: v for k, v in meta.items() if k not in ("episode_index", "tasks", "length")}
            writer.add_episode_table(table, meta["tasks"][0], extra, st["stats"])
        per_task[task] = len(episodes)
    writer.finalize({"graphvla": {"source": "metaworld", "protocol": P.NAME, "camera": P.CAMERA, "image_size": size,
                                  "tasks": tasks, "failed_variants": failed, "held_out_variants": held_out,
                                  "state": "hand xyz + gripper opening (obs[0:4])",
                                  "environment_state": "the full 39-d observation: privileged, for labelled upper bounds only"}})
    shutil.rmtree(parts)
    return {"root": str(out), "episodes": len(writer.episodes), "frames": writer.total_frames, "per_task": per_task,
            "failed": {t: len(v) for t, v in failed.items() if v}}


def _episodes(root):
    from .lerobot import read_episode_records

    return read_episode_records(root)


def recorded_scenes(root) -> dict[str, set[int]]:
    """task -> the protocol variants its recorded demonstrations start from."""
    out: dict[str, set[int]] = {}
    for e in _episodes(root):
        if "variant" in e:
            out.setdefault(e["env_task"], set()).add(int(e["variant"]))
    return out


def recording_protocol(root) -> str | None:
    """The protocol a dataset was recorded for (meta/info.json), None when recorded without one."""
    path = Path(root) / "meta" / "info.json"
    if not path.is_file():
        return None
    return ((json.loads(path.read_text()).get("graphvla") or {}).get("protocol")) or None


def check_recording_protocol(datasets, protocol: str) -> None:
    """Refuse to evaluate on `protocol` against a recording made for another protocol: its scenes
    and frames mean something else there."""
    for root in datasets:
        made_for = recording_protocol(root)
        if made_for is not None and made_for != protocol:
            raise ValueError(f"{root} was recorded for protocol '{made_for}'; it cannot be used to evaluate "
                             f"protocol '{protocol}' (record one with `graphvla data metaworld --protocol {protocol}`)")


def recorded_scene_vectors(root) -> dict[str, list]:
    """task -> the scene vectors its recorded demonstrations start from (empty for a dataset not
    recorded with --protocol)."""
    out: dict[str, list] = {}
    for e in _episodes(root):
        if "scene" in e:
            out.setdefault(e["env_task"], []).append(e["scene"])
    return out


def validation_scenes(protocol: str, task: str, recorded: set[int], count: int) -> list[int]:
    """Up to `count` scenes of `task` that neither the protocol's evaluation nor a recorded
    demonstration starts from (`recorded`: `recorded_scenes(DATA)[task]`), in the recorder's order
    (scenes whose expert failed come first: the policy never saw them either). starvla-mt50 has 50
    variants per task, 8 of them evaluated, so 35 demonstrations leave at most 7."""
    P = _module(protocol)
    candidates, held_out = _scenes(P, task, len(recorded) + int(count))
    held = set(held_out)
    return [s for s in candidates if s not in recorded and s not in held][:int(count)]
