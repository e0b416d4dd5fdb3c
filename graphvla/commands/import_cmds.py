"""`graphvla import SOURCE CKPT_DIR -o RUN`: a checkpoint another project's trainer wrote, as a
GraphVLA run folder (served, evaluated, swept like a trained one). SOURCE: starvla, lerobot."""
from __future__ import annotations

import click

from .options import handles_errors

SOURCES = ("starvla", "lerobot")
STARVLA_OPTIONS = ("weights", "base_vlm", "dataset_key", "views", "image_size", "fast_tokenizer")


@click.command(name="import")
@click.argument("source")
@click.argument("ckpt_dir", type=click.Path())
@click.option("-o", "--output", "output", required=True, type=click.Path(), help="run folder to write (must not exist)")
@click.option("--weights", type=click.Path(), default=None,
              help="the weights file to import (default: final_model/, else the latest checkpoints/steps_N_*)")
@click.option("--base-vlm", type=click.Path(), default=None,
              help="the base VLM's folder (config.json, tokenizer, processor); default: config.yaml's framework.qwenvl.base_vlm")
@click.option("--dataset-key", default=None, help="which dataset's statistics un-normalize actions (needed when there are several)")
@click.option("--views", type=int, default=2, show_default=True, help="camera views per observation")
@click.option("--image-size", type=int, default=224, show_default=True, help="side of the (square) camera images")
@click.option("--fast-tokenizer", type=click.Path(), default=None,
              help="starVLA QwenFast: the FAST tokenizer folder (physical-intelligence/fast's format); default: "
                   "physical-intelligence/fast from the Hugging Face Hub cache")
@click.option("--patch-positions", type=click.Choice(["index", "shifted"]), default=None,
              help="lerobot, SmolVLA: the SigLIP patch positions of the transformers the policy ran with (default "
                   "by save format: 0.3.x index, 0.4+ shifted; a LeRobot 0.5.x save needs index)")
@handles_errors
def import_(source, ckpt_dir, output, weights, base_vlm, dataset_key, views, image_size, fast_tokenizer, patch_positions):
    """Import CKPT_DIR, a checkpoint SOURCE's trainer wrote (starvla or lerobot), as the GraphVLA run
    OUTPUT. `starvla`: a starVLA run folder (config.yaml, dataset_statistics.json, checkpoints/);
    starVLA frameworks GraphVLA cannot represent are refused by name. `lerobot`: a policy LeRobot's
    save_pretrained wrote (a folder or a Hub id); the other options are starVLA's and refused;
    policy types and versions GraphVLA cannot import are refused by name."""
    if source not in SOURCES:
        raise ValueError(f"import source '{source}' is not one GraphVLA imports from ({', '.join(SOURCES)})")
    if source == "lerobot":
        ctx = click.get_current_context()
        given = ["--" + name.replace("_", "-") for name in STARVLA_OPTIONS
                 if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
        if given:
            raise ValueError(f"{', '.join(given)}: options of `graphvla import starvla`; a LeRobot save is one folder "
                             "(config.json, model.safetensors and its statistics)")
        from ..policy.checkpoint import read_json
        from ..runners.importers.lerobot import import_lerobot

        run = import_lerobot(ckpt_dir, output, patch_positions=patch_positions)
        info = read_json(run / "imported.json")
        click.echo(f"imported LeRobot {info['policy']} ({info['tensors']} tensors, {info['format']}.x format) as "
                   f"graph {info['graph']} into {run}")
        click.echo(f"observation keys: {', '.join(info['key_map'])}")
        click.echo(f"serve it with: graphvla serve {run}")
        return
    if patch_positions is not None:
        raise ValueError("--patch-positions: an option of `graphvla import lerobot` (SmolVLA)")
    from ..policy.checkpoint import read_json
    from ..runners.importers.starvla import import_starvla

    run = import_starvla(ckpt_dir, output, weights=weights, base_vlm=base_vlm, dataset_key=dataset_key, views=views,
                         image_size=image_size, fast_tokenizer=fast_tokenizer)
    info = read_json(run / "imported.json")
    click.echo(f"imported starVLA {info['framework']} ({info['tensors']} tensors, step {info['step']}, "
               f"statistics '{info['statistics']['dataset_key']}') as graph {info['graph']} into {run}")
    click.echo(f"serve it with: graphvla serve {run}")


commands = [import_]
