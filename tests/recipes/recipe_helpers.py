"""What every recipe test shares: the paths and the subprocess environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
CONFIGS = ROOT / "accelerate_configs"
RECIPE_CONFIGS = RECIPES / "configs"
BIN = Path(sys.executable).parent


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env
