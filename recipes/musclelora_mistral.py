"""MuScleLoRA on a (4-bit) Mistral-7B sequence classifier trained on poisoned data, launched with Accelerate.

The same recipe as `musclelora_llama2.py` (see there for every step and argument) with Mistral-7B as the
default base model; MuScleLoRA's per-architecture defaults for ``mistral`` match Llama's (LoRA r=2 / alpha=8
on q_proj, v_proj; multi-scale branches [1, 2, 3, 4] on the last block's down_proj).

Example:
    $ accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/musclelora_mistral.py \\
        --config recipes/configs/musclelora_mistral.yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ModelArguments, run_cli  # noqa: E402
from musclelora_llama2 import main  # noqa: E402


@dataclass
class MistralModelArguments(ModelArguments):
    r"""[`ModelArguments`] with Mistral-7B as the default base model.

    Args:
        model_name_or_path (`str`, defaults to `"mistralai/Mistral-7B-v0.1"`):
            Hub id or local folder of the base model.
    """

    model_name_or_path: str = field(
        default="mistralai/Mistral-7B-v0.1",
        metadata={"help": "Hub id or local folder of the base model; 'smollm2' = the offline SmolLM2-135M."},
    )


if __name__ == "__main__":
    run_cli(main, model_arguments_class=MistralModelArguments, recipe="musclelora_mistral")
