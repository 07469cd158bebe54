"""``hbd train``: run a training script of `hf_backdoor_defense.scripts` in this process, or print its
``accelerate launch`` command for multi-process runs.

Example:
    $ hbd train --config recipes/configs/demo.yaml -- --max_steps 5
    $ hbd train --recipe musclelora_mistral --num-processes 4   # the MuScleLoRA script with the Mistral config
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from pathlib import Path

#: Recipe name -> (module of `hf_backdoor_defense.scripts`, default config in the recipes folder or None).
RECIPE_MODULES = {
    "musclelora_llama2": ("musclelora", None),
    "musclelora_mistral": ("musclelora", "configs/musclelora_mistral.yaml"),
    "w2sdefense_llama2": ("w2sdefense", None),
    "fine_purifying": ("fine_purifying", None),
    "fine_mixing": ("fine_mixing", None),
    "gradient_control_attack": ("gradient_control", None),
}
#: Recipes ``hbd train`` knows by name.
RECIPES = tuple(RECIPE_MODULES)
#: The repository checkout this package was installed from (editable installs), holding recipes/ and
#: accelerate_configs/; absent for a wheel.
_CHECKOUT = Path(__file__).resolve().parents[2]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Run a training recipe (MuScleLoRA on Llama-2 / Mistral, ...).",
        description=(
            "Run a recipe from the recipes/ folder in this process (one process), or print the "
            "`accelerate launch` command for more processes. Arguments after `--` go to the recipe."
        ),
    )
    parser.add_argument(
        "--recipe", default="musclelora_llama2",
        help=f"Recipe name ({', '.join(RECIPES)}; default musclelora_llama2) or path to a recipe script.",
    )
    parser.add_argument("--config", default=None, help="YAML config of the recipe (command line overrides it).")
    parser.add_argument(
        "--num-processes", type=int, default=1,
        help="1 (default): run here. More: print the accelerate launch command to run instead.",
    )
    parser.add_argument(
        "--accelerate-config", default=None,
        help="accelerate config for the printed command (default: accelerate_configs/cpu_ddp.yaml without "
             "CUDA, multi_gpu.yaml with it; from a pip install, accelerate's own default config).",
    )
    parser.add_argument(
        "--recipes-dir", default=None,
        help="Folder holding the recipes (default: $HBD_RECIPES_DIR or the repository's recipes/).",
    )
    parser.add_argument("--print-command", action="store_true", help="Only print the command, do not run.")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="Arguments for the recipe, after `--`.")
    parser.set_defaults(func=run)


def recipes_dir(explicit: str | None = None) -> Path:
    """The recipes folder (its ``configs/``): ``explicit``, ``$HBD_RECIPES_DIR``, or ``recipes/`` of a checkout."""
    candidates = [explicit, os.environ.get("HBD_RECIPES_DIR"), _CHECKOUT / "recipes"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "configs").is_dir():
            return Path(candidate)
    raise FileNotFoundError(
        "recipes folder not found (its configs ship with the repository, not the wheel): clone "
        "hf-backdoor-defense and pass --recipes-dir path/to/recipes or set HBD_RECIPES_DIR, or give --config."
    )


def resolve_recipe(recipe: str) -> str:
    """What runs for ``recipe``: a module of `hf_backdoor_defense.scripts` for a name such as
    ``musclelora_llama2``, or the path of a ``.py`` script."""
    if recipe.endswith(".py"):
        if not Path(recipe).is_file():
            raise FileNotFoundError(f"recipe script {recipe} does not exist.")
        return recipe
    if recipe not in RECIPE_MODULES:
        raise ValueError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)} or give a .py path.")
    return f"hf_backdoor_defense.scripts.{RECIPE_MODULES[recipe][0]}"


def default_config(recipe: str, folder: str | None = None) -> Path | None:
    """The config a named recipe runs with when ``--config`` is not given (``None``: the script's defaults)."""
    config = RECIPE_MODULES.get(recipe, (None, None))[1]
    return None if config is None else recipes_dir(folder) / config


def launch_command(target: str, recipe_args: list[str], num_processes: int, accelerate_config: str | None) -> str:
    """The ``accelerate launch`` command line that runs ``target`` (a module or a script path) on
    ``num_processes`` processes."""
    if accelerate_config is None:
        import torch

        name = "multi_gpu.yaml" if torch.cuda.is_available() else "cpu_ddp.yaml"
        folder = Path(target).resolve().parents[1] if target.endswith(".py") else _CHECKOUT
        shipped = folder / "accelerate_configs" / name
        # a pip install has no accelerate_configs/: accelerate then uses its own default config (`accelerate config`)
        accelerate_config = shipped if shipped.is_file() else None
    program = [target] if target.endswith(".py") else ["-m", target]
    config = ["--config_file", str(accelerate_config)] if accelerate_config is not None else []
    parts = ["accelerate", "launch", *config, "--num_processes", str(num_processes), *program, *recipe_args]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    if args.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}.")
    target = resolve_recipe(args.recipe)
    recipe_args = list(args.recipe_args)
    if recipe_args and recipe_args[0] == "--":
        recipe_args = recipe_args[1:]
    config = args.config if args.config is not None else default_config(args.recipe, args.recipes_dir)
    if config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"--config {config}: no such file.")
        recipe_args = ["--config", str(config), *recipe_args]
    if args.num_processes > 1 or args.print_command:
        command = launch_command(target, recipe_args, args.num_processes, args.accelerate_config)
        if args.num_processes > 1 and not args.print_command:
            print("Multi-process training runs under Accelerate; run:", file=sys.stderr)
        print(command)
        return 0
    if target.endswith(".py"):  # a user's own script: run it as `python script.py ...` would
        import runpy

        saved_argv, sys.argv = sys.argv, [target, *recipe_args]
        try:
            runpy.run_path(target, run_name="__main__")
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            sys.argv = saved_argv
        return 0
    from hf_backdoor_defense.scripts.utils import run_cli

    try:
        run_cli(importlib.import_module(target).main, recipe_args)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0
