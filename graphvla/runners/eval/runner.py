"""`graphvla eval`: run a suite through a policy client, summarize, write JSON and GIFs."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from ...fileio import write_text_atomic
from .stats import format_table, summarize

SUITES = ("metaworld",)


def write_gif(path: Path, frames: list, fps: int = 20, every: int = 2, max_frames: int = 120) -> None:
    import imageio.v3 as iio

    picked = [np.asarray(f) for f in frames[::every]][:max_frames]
    if picked:  # pillow's GIF writer takes the frame duration in milliseconds
        iio.imwrite(path, np.stack(picked), extension=".gif", duration=int(1000 * every / fps), loop=0)


def check_disjoint_seeds(data_dir, tasks: list[str], seed_offset: int, episodes: int) -> None:
    """Refuse an evaluation that would replay the initial scene of a recorded demonstration."""
    from ...data.metaworld_record import recorded_seeds

    recorded = recorded_seeds(data_dir)
    wanted = set(range(seed_offset, seed_offset + episodes))
    for task in tasks:
        clash = sorted(wanted & set(recorded.get(task, ())))
        if clash:
            raise ValueError(f"eval seeds {seed_offset}..{seed_offset + episodes - 1} of {task} include seeds its "
                             f"demonstrations in {data_dir} used ({clash[:5]}...); pick another --seed-offset")


def _run_task(mw, task, query, adapter, builder, episodes, seed_offset, size, camera, max_steps, gif_dir, reset):
    from .metaworld import run_episode

    env = mw.make_env(task, seed=seed_offset, size=size, camera=camera)
    try:
        results = []
        for i in range(episodes):
            if reset:
                reset()
            r = run_episode(env, task, seed_offset + i, query, adapter, builder, max_steps,
                            record=gif_dir is not None and i == 0)
            frames = r.pop("frames")
            if frames:
                write_gif(gif_dir / f"{task}.gif", frames)
            results.append(r)
        return results
    finally:
        env.close()


def evaluate_metaworld(query, metadata: dict, adapter, tasks: list[str], episodes: int, seed_offset: int,
                       out_dir: Path | None, max_steps: int | None = None, gifs: bool = True, reset=None,
                       log=print) -> dict:
    """Run `episodes` episodes per task with seeds seed_offset .. seed_offset + episodes - 1."""
    from ...sim import metaworld as mw
    from .metaworld import RequestBuilder

    builder = RequestBuilder(metadata)
    env_cfg = adapter.config.get("env") or {}
    camera = env_cfg.get("camera", "corner")
    max_steps = int(max_steps or env_cfg.get("max_steps", 300))
    size = builder.image_size or 128
    per_task, details = {}, {}
    started = time.perf_counter()
    for task in tasks:
        with warnings.catch_warnings():  # gymnasium's checker warns about Meta-World's own spaces
            warnings.filterwarnings("ignore", message=".*(not within the observation space|maximum and minimum)")
            results = _run_task(mw, task, query, adapter, builder, episodes, seed_offset, size, camera, max_steps,
                                out_dir if gifs else None, reset)
        per_task[task] = [r["success"] for r in results]
        details[task] = results
        log(f"{task}: {sum(per_task[task])}/{episodes} successes")
    summary = summarize(per_task)
    summary["episodes"] = details
    summary["config"] = {"suite": "metaworld", "tasks": tasks, "episodes_per_task": episodes,
                         "seeds": [seed_offset, seed_offset + episodes - 1], "max_steps": max_steps,
                         "camera": camera, "adapter": adapter.config, "graph": metadata.get("name"),
                         "fingerprint": metadata.get("fingerprint"), "privileged": bool(metadata.get("privileged")),
                         "seconds": round(time.perf_counter() - started, 1)}
    if out_dir is not None:
        write_text_atomic(out_dir / "results.json", json.dumps(summary, indent=2))
    return summary


__all__ = ["SUITES", "evaluate_metaworld", "format_table", "write_gif"]
