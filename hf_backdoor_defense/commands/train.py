"""``hbd train``: run a training recipe from ``recipes/`` in this process, or print its ``accelerate launch``
command for multi-process runs.

Example:
    $ hbd train --config recipes/configs/demo.yaml -- --max_steps 5
    $ hbd train --recipe musclelora_mistral --num-processes 4   # musclelora_llama2.py with the Mistral config
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys
from pathlib import Path

#: Recipes ``hbd train`` knows by name (scripts in the recipes folder, or a script with a config below).
RECIPES = ("musclelora_llama2", "musclelora_mistral", "w2sdefense_llama2", "fine_purifying", "fine_mixing",
           "gradient_control_attack")
#: Recipes that are a config of another recipe's script: name -> (script, default config in the recipes folder).
RECIPE_CONFIGS = {"musclelora_mistral": ("musclelora_llama2", "configs/musclelora_mistral.yaml")}


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
             "CUDA, multi_gpu.yaml with it).",
    )
    parser.add_argument(
        "--recipes-dir", default=None,
        help="Folder holding the recipes (default: $HBD_RECIPES_DIR or the repository's recipes/).",
    )
    parser.add_argument("--print-command", action="store_true", help="Only print the command, do not run.")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="Arguments for the recipe, after `--`.")
    parser.set_defaults(func=run)


def recipes_dir(explicit: str | None = None) -> Path:
    """The recipes folder: ``explicit``, ``$HBD_RECIPES_DIR``, or ``recipes/`` next to the package (a checkout)."""
    candidates = [explicit, os.environ.get("HBD_RECIPES_DIR"), Path(__file__).resolve().parents[2] / "recipes"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "common.py").is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "recipes folder not found (it ships with the repository, not the wheel): clone "
        "hf-backdoor-defense and pass --recipes-dir path/to/recipes or set HBD_RECIPES_DIR."
    )


def resolve_recipe(recipe: str, folder: str | None = None) -> Path:
    """Path of the recipe script for a name such as ``musclelora_llama2`` or a path to a ``.py`` file."""
    if recipe.endswith(".py"):
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"recipe script {recipe} does not exist.")
        return path
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)} or give a .py path.")
    return recipes_dir(folder) / f"{RECIPE_CONFIGS.get(recipe, (recipe,))[0]}.py"


def default_config(recipe: str, folder: str | None = None) -> Path | None:
    """The config a named recipe runs with when ``--config`` is not given (``None``: the script's defaults)."""
    if recipe not in RECIPE_CONFIGS:
        return None
    return recipes_dir(folder) / RECIPE_CONFIGS[recipe][1]


def launch_command(script: Path, recipe_args: list[str], num_processes: int, accelerate_config: str | None) -> str:
    """The ``accelerate launch`` command line that runs ``script`` on ``num_processes`` processes."""
    if accelerate_config is None:
        import torch

        name = "multi_gpu.yaml" if torch.cuda.is_available() else "cpu_ddp.yaml"
        accelerate_config = str(script.resolve().parents[1] / "accelerate_configs" / name)
    parts = ["accelerate", "launch", "--config_file", accelerate_config, "--num_processes", str(num_processes),
             str(script), *recipe_args]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    if args.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}.")
    script = resolve_recipe(args.recipe, args.recipes_dir)
    recipe_args = list(args.recipe_args)
    if recipe_args and recipe_args[0] == "--":
        recipe_args = recipe_args[1:]
    config = args.config if args.config is not None else default_config(args.recipe, args.recipes_dir)
    if config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"--config {config}: no such file.")
        recipe_args = ["--config", str(config), *recipe_args]
    if args.num_processes > 1 or args.print_command:
        command = launch_command(script, recipe_args, args.num_processes, args.accelerate_config)
        if args.num_processes > 1 and not args.print_command:
            print("Multi-process training runs under Accelerate; run:", file=sys.stderr)
        print(command)
        return 0
    saved_argv = sys.argv
    sys.argv = [str(script), *recipe_args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0
