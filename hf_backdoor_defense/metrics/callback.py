"""A Trainer callback that adds CACC and ASR to every evaluation.

How the numbers reach the Trainer (transformers 5.x): ``Trainer.evaluate`` first calls
``self.log(metrics)`` (which appends a *copy* to ``state.log_history`` and fires ``on_log`` with the
metrics dict itself), then fires ``on_evaluate`` with the same dict, then returns it. The callback
computes its scores in ``on_log`` when the logs are evaluation logs (they carry ``<prefix>_runtime``),
writes them into that dict (so callbacks after it, ``metric_for_best_model="asr"`` and the value
returned by ``trainer.evaluate()`` see them) and into the ``log_history`` entry; ``on_evaluate`` fills
them in if ``on_log`` did not run. Reporting integrations (TensorBoard, W&B, ...) registered *before*
this callback have already been called; use :meth:`BackdoorEvalCallback.attach` to put it first.
"""

from __future__ import annotations

from datasets import Dataset
from transformers import TrainerCallback

from .evaluation import evaluate_backdoor


class BackdoorEvalCallback(TrainerCallback):
    """Log clean accuracy (``eval_cacc``) and attack success rate (``eval_asr``) at each evaluation.

    Args:
        tokenizer: Tokenizer of the model.
        clean_dataset (`datasets.Dataset`): Clean test set with text and label columns.
        attack: An attack from :mod:`hf_backdoor_defense.attacks` (gives the trigger and target).
        batch_size (`int`, defaults to 32): Prediction batch size.
        max_length (`int`, defaults to 128): Truncation length.
        metric_key_prefix (`str`, defaults to `"eval"`): Keys are ``f"{prefix}_cacc"``, ``f"{prefix}_asr"``.
        disable_progress_bar (`bool`, defaults to `True`): Hide the prediction progress bars.

    Example:
        >>> callback = BackdoorEvalCallback(tokenizer, data["test"], BadNets())  # doctest: +SKIP
        >>> trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
        ...                   callbacks=[callback])  # doctest: +SKIP
        >>> trainer.evaluate()["eval_asr"]  # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer,
        clean_dataset: Dataset,
        attack,
        *,
        batch_size: int = 32,
        max_length: int = 128,
        metric_key_prefix: str = "eval",
        disable_progress_bar: bool = True,
    ) -> None:
        if not isinstance(clean_dataset, Dataset):
            raise ValueError(
                f"`clean_dataset` must be a datasets.Dataset, got {type(clean_dataset).__name__}."
            )
        attack._check_dataset(clean_dataset)
        self.tokenizer = tokenizer
        self.clean_dataset = clean_dataset
        self.attack = attack
        self.batch_size = batch_size
        self.max_length = max_length
        self.prefix = metric_key_prefix
        self.disable_progress_bar = disable_progress_bar
        self._cache: tuple[int, dict[str, float]] | None = None
        self.history: list[dict[str, float]] = []

    @classmethod
    def attach(cls, trainer, *args, **kwargs) -> BackdoorEvalCallback:
        """Create the callback and register it *first*, so every other callback sees its metrics."""
        callback = cls(*args, **kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def _scores(self, model, state) -> dict[str, float]:
        if self._cache is not None and self._cache[0] == state.global_step:
            return self._cache[1]
        result = evaluate_backdoor(
            model,
            self.tokenizer,
            self.clean_dataset,
            self.attack,
            batch_size=self.batch_size,
            max_length=self.max_length,
            disable_progress_bar=self.disable_progress_bar,
        )
        scores = {f"{self.prefix}_cacc": result["cacc"], f"{self.prefix}_asr": result["asr"]}
        self._cache = (state.global_step, scores)
        self.history.append({**scores, "step": state.global_step})
        return scores

    def _is_eval_log(self, logs: dict) -> bool:
        return any(k.startswith(f"{self.prefix}_") and k.endswith("_runtime") for k in logs)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if model is None or not logs or not self._is_eval_log(logs):
            return
        scores = self._scores(model, state)
        logs.update(scores)
        # `Trainer.log` appended a copy of `logs` just before calling us: complete that entry.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(scores)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if model is None or metrics is None or f"{self.prefix}_asr" in metrics:
            return
        scores = self._scores(model, state)
        metrics.update(scores)
        entry = next((e for e in reversed(state.log_history) if e.get("step") == state.global_step), None)
        if entry is not None and self._is_eval_log(entry):
            entry.update(scores)
        else:
            state.log_history.append({**scores, "step": state.global_step})
