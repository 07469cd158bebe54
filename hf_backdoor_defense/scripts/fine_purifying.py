"""Fine-purifying on a suspect classifier or adapter: reset the dimensions that moved far although the clean loss
is flat along them (diffusion theory), fine-tune on a small clean set, compare CACC / ASR before and after.

The suspect (``--model_name_or_path``: a full fine-tuned checkpoint or a PEFT adapter folder) is purified against
its clean pre-trained base (``--base_model_name_or_path``, θ₀): ``r_i = δ_i² / (H_ii + ε)`` with ``δ = θ_B − θ₀``
and ``H`` the empirical-Fisher diagonal on the clean set; the ``--ratio`` fraction with the largest ``r_i`` goes
back to θ₀ (the ratio is chosen on a clean dev set unless ``--ratio_search false``), then the clean fine-tune
(``--num_train_epochs`` / ``--max_steps``, ``--learning_rate``). See `hf_backdoor_defense.scripts.purify` for the data, the
outputs, ``--poison_first`` and what ``--load_in_4bit`` means here (adapters only).

Examples:
    # a LoRA adapter on 4-bit Llama-2-7B (only the adapter and its head copy are purified)
    $ accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/fine_purifying.py \\
        --config recipes/configs/fine_purifying.yaml --model_name_or_path ./llama2-sst2-suspect-adapter
    # offline, end to end: fine-tune MiniLM on poisoned Rotten Tomatoes, then purify it (E-PUR first)
    $ python recipes/fine_purifying.py --config recipes/configs/purify_demo.yaml --epur true
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_backdoor_defense.options import ESTIMATORS, SCOPES
from hf_backdoor_defense.scripts.purify import main as _main
from hf_backdoor_defense.scripts.purify import make_parser as _make_parser
from hf_backdoor_defense.scripts.utils import run_cli


@dataclass
class FinePurifyingArguments:
    r"""Options of Fine-purifying (`hf_backdoor_defense.purification.FinePurifying`).

    Args:
        ratio (`float`, defaults to `0.3`):
            Fraction of the ranked dimensions reset to θ₀ (largest `δ²/(H+ε)` first); replaced by the search's
            choice unless `--ratio_search false`.
        ratio_of (`str`, defaults to `"moved"`):
            What the ratio counts: the dimensions fine-tuning moved (`"moved"`) or all of them (`"all"`).
        embeddings (`str`, defaults to `"exclude"`):
            Leave the word embeddings out of the ranking (`"exclude"`; `--epur true` treats them) or rank them.
        epur (`bool`, defaults to `False`):
            Run E-PUR first (full models only): the recommended composition for a full model, since
            Fine-purifying leaves the word embeddings alone by default.
        epur_num_tokens (`int`, defaults to `200`):
            E-PUR: number of embedding rows reset to θ₀.
        alpha (`float`, defaults to `1.0`):
            Exponent of the curvature in the score `δ²/(H+ε)^α` (1: the paper's rule; 0: drift alone).
        scope (`str`, defaults to `"global"`):
            `"global"` ranks all tensors together, `"per_tensor"` resets `ratio` of each tensor.
        estimator (`str`, defaults to `"example"`):
            Empirical Fisher from per-`"example"` gradients or per-`"batch"` mean gradients (faster).
        epsilon (`float`, defaults to `1e-3`):
            Damping added to `H_ii`, relative to the mean of `H`.
        hessian_batch_size (`int`, defaults to `8`):
            Batch size of the Hessian estimate.
        hessian_max_batches (`int` or `None`, defaults to `None`):
            Use at most this many batches of the clean set for the Hessian (`None`: all).
    """

    ratio: float = field(default=0.3, metadata={"help": "Fraction of dimensions (largest delta^2/(H+eps)) reset."})
    ratio_of: str = field(default="moved", metadata={"help": "What the ratio counts.", "choices": ["moved", "all"]})
    embeddings: str = field(default="exclude", metadata={"help": "Rank the word embeddings?",
                                                         "choices": ["exclude", "include"]})
    alpha: float = field(default=1.0, metadata={"help": "Exponent of H + eps in the score (1: the paper)."})
    epur: bool = field(default=False, metadata={"help": "Run E-PUR (embedding purification) first; full models only."})
    epur_num_tokens: int = field(default=200, metadata={"help": "E-PUR: embedding rows reset to the pre-trained value."})
    scope: str = field(default="global", metadata={"help": "Ranking scope.", "choices": list(SCOPES)})
    estimator: str = field(
        default="example", metadata={"help": "Empirical Fisher per 'example' or per 'batch'.", "choices": list(ESTIMATORS)}
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
        if self.epur_num_tokens < 0:
            raise ValueError(f"epur_num_tokens must be >= 0, got {self.epur_num_tokens}.")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0 (1 is the paper's score), got {self.alpha}.")
        if self.hessian_max_batches is not None and self.hessian_max_batches < 1:
            raise ValueError(f"hessian_max_batches must be >= 1 or None, got {self.hessian_max_batches}.")


def build_purifier(method_args: FinePurifyingArguments, purify_args, script_args, training_args):
    """The `FinePurifying` purifier of the command line, preceded by `EmbeddingPurification` with ``--epur true``."""
    from hf_backdoor_defense.purification import EmbeddingPurification, FinePurifying, compose

    purifying = FinePurifying(
        ratio=method_args.ratio, ratio_of=method_args.ratio_of, embeddings=method_args.embeddings,
        alpha=method_args.alpha, scope=method_args.scope, estimator=method_args.estimator,
        epsilon=method_args.epsilon, batch_size=method_args.hessian_batch_size,
        max_batches=method_args.hessian_max_batches, max_length=script_args.max_length, head=purify_args.head,
        show_progress=not training_args.disable_tqdm,
    )
    if not method_args.epur:
        return purifying
    return compose(EmbeddingPurification(num_tokens=method_args.epur_num_tokens, head=purify_args.head), purifying)


def make_parser(subparsers=None):
    """The script's `trl.TrlParser` (or its sub-command of a TRL-style command line)."""
    return _make_parser(FinePurifyingArguments, "fine_purifying", "Purify a suspect model with Fine-purifying (optionally after E-PUR).", subparsers)


def main(argv=None) -> dict:
    """Run the recipe; returns the results dict (also written to ``<output_dir>/results.json``)."""
    return _main(argv, method_arguments_class=FinePurifyingArguments, build_purifier=build_purifier,
                 defense="fine-purifying", recipe="fine_purifying", needs_full_model=lambda args: args.epur)


if __name__ == "__main__":
    run_cli(main)
