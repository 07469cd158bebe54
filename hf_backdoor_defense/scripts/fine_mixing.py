"""Fine-mixing (optionally with E-PUR) on a suspect classifier or adapter: mix its fine-tuned weights with the
pre-trained ones, fine-tune on a small clean set, compare CACC / ASR before and after.

``θ_mix = θ₀ + m ⊙ (θ_B − θ₀)``: a ``--ratio`` fraction of the fine-tuned dimensions goes back to θ₀ (a seeded
random mask, the paper's main method, or ``--mask magnitude``: those that moved least), or ``--ratio_search
true`` picks the ratio on a clean dev set; then the clean fine-tune. ``--epur true`` first resets the
input-embedding rows of the ``--epur_num_tokens`` tokens that drifted most relative to their clean-text frequency
(full models only: an adapter does not change the embeddings). See `hf_backdoor_defense.scripts.purify` for the data, the outputs,
``--poison_first`` and what ``--load_in_4bit`` means here (adapters only).

Examples:
    # a LoRA adapter on 4-bit Llama-2-7B
    $ accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/fine_mixing.py \\
        --config recipes/configs/fine_mixing.yaml --model_name_or_path ./llama2-sst2-suspect-adapter
    # offline, end to end, with E-PUR: fine-tune MiniLM on poisoned Rotten Tomatoes, then purify it
    $ python recipes/fine_mixing.py --config recipes/configs/purify_demo.yaml --epur true \\
        --output_dir outputs/purify-demo-fine-mixing
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_backdoor_defense.options import MASKS, SCOPES
from hf_backdoor_defense.scripts.purify import main as _main
from hf_backdoor_defense.scripts.purify import make_parser as _make_parser
from hf_backdoor_defense.scripts.utils import run_cli


@dataclass
class FineMixingArguments:
    r"""Options of Fine-mixing (`hf_backdoor_defense.purification.FineMixing`) and E-PUR.

    Args:
        ratio (`float`, defaults to `0.5`):
            Fraction of the fine-tuned dimensions reset to θ₀ (the paper's `1 − ρ`); replaced by the search's
            choice with `--ratio_search true`.
        ratio_of (`str`, defaults to `"moved"`):
            What the ratio counts: the dimensions fine-tuning moved (`"moved"`) or all of them (`"all"`).
        mask (`str`, defaults to `"random"`):
            `"random"` (seeded, the paper's main method) or `"magnitude"` (keep the dimensions that moved most).
        scope (`str`, defaults to `"global"`):
            `"magnitude"` only: rank all tensors together (`"global"`) or each one (`"per_tensor"`).
        mixing_seed (`int`, defaults to `0`):
            Seed of the random mask.
        epur (`bool`, defaults to `False`):
            Run E-PUR first (full models only).
        epur_num_tokens (`int`, defaults to `200`):
            E-PUR: number of embedding rows reset to θ₀.
    """

    ratio: float = field(default=0.5, metadata={"help": "Fraction of fine-tuned dimensions reset (paper: 1 - rho)."})
    ratio_of: str = field(default="moved", metadata={"help": "What the ratio counts.", "choices": ["moved", "all"]})
    mask: str = field(default="random", metadata={"help": "Mixing mask.", "choices": list(MASKS)})
    scope: str = field(default="global", metadata={"help": "Ranking scope (magnitude mask).", "choices": list(SCOPES)})
    mixing_seed: int = field(default=0, metadata={"help": "Seed of the random mask."})
    epur: bool = field(default=False, metadata={"help": "Run E-PUR (embedding purification) first; full models only."})
    epur_num_tokens: int = field(default=200, metadata={"help": "E-PUR: embedding rows reset to the pre-trained value."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must lie in [0, 1] (the fraction of dimensions reset), got {self.ratio}.")
        if self.mask not in MASKS:
            raise ValueError(f"mask={self.mask!r} is unknown: use one of {MASKS}.")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} is unknown: use one of {SCOPES}.")
        if self.epur_num_tokens < 0:
            raise ValueError(f"epur_num_tokens must be >= 0, got {self.epur_num_tokens}.")


def build_purifier(method_args: FineMixingArguments, purify_args, script_args, training_args):
    """`FineMixing`, preceded by `EmbeddingPurification` with ``--epur true``."""
    from hf_backdoor_defense.purification import EmbeddingPurification, FineMixing, compose

    mixing = FineMixing(ratio=method_args.ratio, ratio_of=method_args.ratio_of, mask=method_args.mask,
                        scope=method_args.scope,
                        head=purify_args.head, seed=method_args.mixing_seed)
    if not method_args.epur:
        return mixing
    return compose(EmbeddingPurification(num_tokens=method_args.epur_num_tokens, head=purify_args.head), mixing)


def make_parser(subparsers=None):
    """The script's `trl.TrlParser` (or its sub-command of a TRL-style command line)."""
    return _make_parser(FineMixingArguments, "fine_mixing", "Purify a suspect model with Fine-mixing (optionally after E-PUR).", subparsers)


def main(argv=None) -> dict:
    """Run the recipe; returns the results dict (also written to ``<output_dir>/results.json``)."""
    return _main(argv, method_arguments_class=FineMixingArguments, build_purifier=build_purifier,
                 defense="fine-mixing", recipe="fine_mixing", needs_full_model=lambda args: args.epur)


if __name__ == "__main__":
    run_cli(main)
