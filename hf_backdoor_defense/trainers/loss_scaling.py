"""One fix shared by every trainer of the project: correct loss scaling under gradient accumulation.

transformers 5.23 passes ``num_items_in_batch`` to any model whose ``forward`` takes ``**kwargs`` and
then skips the ``1 / gradient_accumulation_steps`` scaling, trusting the model to divide by the item
count. ``*ForSequenceClassification`` models ignore it (their loss is a plain per-example mean), so
accumulated gradients come out ``gradient_accumulation_steps`` times too large; the item count is also
taken over ``labels[..., 1:]``, wrong for one label per example. For those models we fall back to the
Trainer's mean-then-divide path.
"""

from __future__ import annotations


def use_mean_loss_for_classification(trainer) -> None:
    """Make ``trainer`` scale classification losses by ``1 / gradient_accumulation_steps`` itself.

    Call it at the end of a ``Trainer`` subclass's ``__init__``. No effect on causal LMs (whose loss does
    use the item count) or when a ``compute_loss_func`` is set.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if type(model).__name__.endswith("ForSequenceClassification") and trainer.compute_loss_func is None:
        trainer.model_accepts_loss_kwargs = False
