"""Fine-purifying on a suspect classifier or adapter: reset the dimensions that moved far although the clean loss
is flat along them (diffusion theory), fine-tune on a small clean set, compare CACC / ASR before and after.

The suspect (``--model_name_or_path``: a full fine-tuned checkpoint or a PEFT adapter folder) is purified against
its clean pre-trained base (``--base_model_name_or_path``, θ₀): ``r_i = δ_i² / (H_ii + ε)`` with ``δ = θ_B − θ₀``
and ``H`` the empirical-Fisher diagonal on the clean set; the ``--ratio`` fraction with the largest ``r_i`` goes
back to θ₀ (or ``--ratio_search true`` picks the ratio on a clean dev set), then the clean fine-tune
(``--num_train_epochs`` / ``--max_steps``, ``--learning_rate``). See `purify_common.py` for the data, the
outputs, ``--poison_first`` and what ``--load_in_4bit`` means here (adapters only).

Examples:
    # a LoRA adapter on 4-bit Llama-2-7B (only the adapter and its head copy are purified)
    $ accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/fine_purifying.py \\
        --config recipes/configs/fine_purifying.yaml --model_name_or_path ./llama2-sst2-suspect-adapter
    # offline, end to end: fine-tune MiniLM on poisoned Rotten Tomatoes, then purify it
    $ python recipes/fine_purifying.py --config recipes/configs/purify_demo.yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_cli  # noqa: E402
from purify_common import main as _main  # noqa: E402

SCOPES = ("global", "per_tensor")
ESTIMATORS = ("batch", "example")


@dataclass
class FinePurifyingArguments:
    r"""Options of Fine-purifying (`hf_backdoor_defense.purification.FinePurifying`).

    Args:
        ratio (`float`, defaults to `0.3`):
            Fraction of the ranked dimensions reset to θ₀ (largest `δ²/(H+ε)` first); replaced by the search's
            choice with `--ratio_search true`.
        scope (`str`, defaults to `"global"`):
            `"global"` ranks all tensors together, `"per_tensor"` resets `ratio` of each tensor.
        estimator (`str`, defaults to `"batch"`):
            Empirical Fisher from per-`"batch"` mean gradients or per-`"example"` gradients (slower).
        epsilon (`float`, defaults to `1e-3`):
            Damping added to `H_ii`, relative to the mean of `H`.
        hessian_batch_size (`int`, defaults to `8`):
            Batch size of the Hessian estimate.
        hessian_max_batches (`int` or `None`, defaults to `None`):
            Use at most this many batches of the clean set for the Hessian (`None`: all).
    """

    ratio: float = field(default=0.3, metadata={"help": "Fraction of dimensions (largest delta^2/(H+eps)) reset."})
    scope: str = field(default="global", metadata={"help": "Ranking scope.", "choices": list(SCOPES)})
    estimator: str = field(
        default="batch", metadata={"help": "Empirical Fisher per 'batch' or per 'example'.", "choices": list(ESTIMATORS)}
    )
    epsilon: float = field(default=1e-3, metadata={"help": "Damping added to H, relative to mean(H)."})
    hessian_batch_size: int = field(default=8, metadata={"help": "Batch size of the Hessian estimate."})
    hessian_max_batches: int | None = field(
        default=None, metadata={"help": "At most this many batches for the Hessian (None: the whole clean set)."}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must lie in [0, 1] (the fraction of dimensions reset), got {self.ratio}.")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} is unknown: use one of {SCOPES}.")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator={self.estimator!r} is unknown: use one of {ESTIMATORS}.")
        if self.epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}.")
        if self.hessian_batch_size < 1:
            raise ValueError(f"hessian_batch_size must be >= 1, got {self.hessian_batch_size}.")
        if self.hessian_max_batches is not None and self.hessian_max_batches < 1:
            raise ValueError(f"hessian_max_batches must be >= 1 or None, got {self.hessian_max_batches}.")


def build_purifier(method_args: FinePurifyingArguments, purify_args, script_args, training_args):
    """The `FinePurifying` purifier of the command line."""
    from hf_backdoor_defense.purification import FinePurifying

    return FinePurifying(
        ratio=method_args.ratio, scope=method_args.scope, estimator=method_args.estimator,
        epsilon=method_args.epsilon, batch_size=method_args.hessian_batch_size,
        max_batches=method_args.hessian_max_batches, max_length=script_args.max_length, head=purify_args.head,
        show_progress=not training_args.disable_tqdm,
    )


def main(argv=None) -> dict:
    """Run the recipe; returns the results dict (also written to ``<output_dir>/results.json``)."""
    return _main(argv, method_arguments_class=FinePurifyingArguments, build_purifier=build_purifier,
                 defense="fine-purifying", recipe="fine_purifying")


if __name__ == "__main__":
    run_cli(main)
