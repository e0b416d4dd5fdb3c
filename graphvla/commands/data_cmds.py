"""`graphvla data metaworld|stats|pack|info`: record, inspect and convert datasets."""
from __future__ import annotations

import click

from .options import handles_errors, set_option


@click.group()
def data():
    """Record, inspect and convert robot datasets (LeRobot v2.1/v3.0 folders, webdataset shards)."""


@data.command()
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="new dataset folder")
@click.option("--protocol", type=click.Choice(["starvla-mt50", "lerobot-metaworld"]), default=None,
              help="record for an evaluation protocol: its environments, camera pipeline and scenes "
                   "(never one of its evaluation scenes); resumable, parallel with --workers")
@click.option("--tasks", default=None,
              help="comma-separated Meta-World tasks, or MT10 [reach-v3,push-v3]; with --protocol also MT50 "
                   "or bucket names [MT50]")
@click.option("--episodes", default=10, show_default=True, type=int, help="successful episodes per task")
@click.option("--size", default=None, type=int, help="camera image side in pixels [128; 64 with --protocol]")
@click.option("--camera", default="corner", show_default=True, help="camera (the protocol fixes its own)")
@click.option("--seed", default=0, show_default=True, type=int, help="first env seed (task k uses seed + 1000k + attempt)")
@click.option("--workers", default=1, show_default=True, type=int, help="processes recording tasks side by side (--protocol)")
@click.option("--format", "fmt", type=click.Choice(["v2.1", "v3.0"]), default="v2.1", show_default=True,
              help="LeRobot dataset version: v2.1 opens in LeRobot 0.3.x, v3.0 in LeRobot >= 0.4")
@click.option("--video", is_flag=True,
              help="store the camera as H.264 mp4 video (lossy, smaller) instead of PNG frames in the parquet")
@handles_errors
def metaworld(out, protocol, tasks, episodes, size, camera, seed, workers, fmt, video):
    """Record Meta-World scripted-expert demonstrations into a LeRobot dataset (v2.1 or v3.0)."""
    import warnings

    warnings.filterwarnings("ignore", module="gymnasium")
    if protocol:
        from ..data.protocol_record import record_protocol
        from ..sim import protocol_module

        P = protocol_module(protocol)
        names = P.select(names=[t.strip() for t in (tasks or "MT50").split(",") if t.strip()])
        s = record_protocol(out, names, episodes, size or 64, workers=workers, log=lambda m: click.echo(m, err=True),
                            protocol=protocol, format=fmt, video=video)
        failed = sum(s["failed"].values())
        click.echo(f"{out}: {s['episodes']} episodes, {s['frames']} frames from {len(names)} task(s) of {protocol}; "
                   f"{failed} scene(s) the expert failed were skipped")
        return
    from ..data.metaworld_record import record_metaworld
    from ..sim.metaworld import MT10

    tasks = tasks or "reach-v3,push-v3"
    names = MT10 if tasks.strip().upper() == "MT10" else [t.strip() for t in tasks.split(",") if t.strip()]

    def progress(task, kept, length):
        click.echo(f"  {task}: episode {kept}/{episodes} ({length} frames)", err=True)

    s = record_metaworld(out, names, episodes, size=size or 128, camera=camera, seed=seed, progress=progress,
                         format=fmt, video=video)
    failed = sum(s.failed.values())
    click.echo(f"{out}: {s.episodes} episodes, {s.frames} frames from {len(names)} task(s); "
               f"{failed} failed expert episode(s) discarded" + (f" {s.failed}" if failed else ""))


@data.command()
@click.argument("dataset", type=click.Path())
@click.option("--keys", default=None, help="comma-separated dataset keys (default: every numeric key)")
@click.option("--spec", "spec", type=click.Path(dir_okay=False),
              help="instead: the statistics of SPEC's state/action ports, exactly as training computes them "
                   "(DATASET may then be a data YAML)")
@set_option
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="also write the JSON to this file")
@handles_errors
def stats(dataset, keys, spec, overrides, out):
    """Print mean/std, min/max and q01/q99 per key (or per graph port with --spec) as JSON."""
    from ..data.stats_report import format_report, stats_report, write_report

    if spec:
        from ..spec.loader import load_spec

        spec = load_spec(spec, overrides)
    result = stats_report(dataset, [k.strip() for k in keys.split(",")] if keys else None, spec)
    text = format_report(result)
    if out:
        write_report(out, result)
    click.echo(text)


@data.command()
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="new shard folder")
@click.option("--frames-per-shard", default=2000, show_default=True, type=int)
@handles_errors
def pack(dataset, out, frames_per_shard):
    """Write a LeRobot folder (or Hugging Face dataset id org/name[@revision]) as webdataset tar
    shards (training reads either)."""
    from ..data.api import open_source
    from ..data.shards import pack as pack_shards

    index = pack_shards(open_source(dataset), out, max_frames=frames_per_shard)
    click.echo(f"{out}: {index['frames']} frames in {len(index['shards'])} shard(s)")


@data.command()
@click.argument("data_yaml", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="folder for llava.json and a data YAML with both streams")
@click.option("--every", default=4, show_default=True, type=int, help="one image-text record per this many frames")
@click.option("--horizon", default=8, show_default=True, type=int,
              help="frames ahead the motion answer describes (the action chunk's length)")
@click.option("--hand-dims", default="0,1,2", show_default=True, help="state dims of the hand's x,y,z")
@click.option("--gripper-dim", default=3, show_default=True, type=int, help="state dim of the gripper (-1: none)")
@click.option("--no-motion", is_flag=True, help="only the task question (for data without a hand state)")
@handles_errors
def vqa(data_yaml, out, every, horizon, hand_dims, gripper_dim, no_motion):
    """Make image-text co-training data (LLaVA JSON) from the frames of robot demonstrations."""
    from ..data.demo_vqa import MotionWords, write_demo_vqa

    try:
        dims = tuple(int(d) for d in hand_dims.split(","))
    except ValueError:
        raise ValueError(f"--hand-dims: expected three comma-separated integers, got '{hand_dims}'") from None
    if len(dims) != 3:
        raise ValueError(f"--hand-dims: expected three dims (x,y,z), got '{hand_dims}'")
    motion = None if no_motion else MotionWords(dims, None if gripper_dim < 0 else gripper_dim)
    s = write_demo_vqa(data_yaml, out, every, horizon, motion, log=lambda m: click.echo(m, err=True))
    click.echo(f"{out}: {s['records']} image-text records from {s['frames']} frames of {s['datasets']} dataset(s); "
               f"train with --data {s['data_yaml']}")


@data.command()
@click.argument("dataset", type=click.Path(file_okay=False))
@handles_errors
def info(dataset):
    """Summarize a dataset (a folder or a Hugging Face dataset id org/name[@revision]): format,
    episodes, frames, tasks, keys and widths."""
    from ..data.api import open_source

    src = open_source(dataset)
    lengths = [e - s for s, e in src.episodes.values()]
    click.echo(f"{dataset}: LeRobot {src.version}, {len(src.episodes)} episodes, {len(src)} frames, fps {src.fps:g}")
    click.echo(f"  episode length: min {min(lengths)}, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")
    for k, v in src.columns.items():
        click.echo(f"  {k}: width {v.shape[1]}")
    for k in src.image_keys:
        click.echo(f"  {k}: camera {src.features.get(k, {}).get('shape')}")
    for i, t in sorted(src.tasks.items()):
        click.echo(f"  task {i}: {t}")


commands = [data]
