"""The model card every trainer of this package writes: ``trainer.push_to_hub()`` publishes what was done.

``transformers.Trainer.push_to_hub`` (and ``save_model`` on the Hub paths) calls ``create_model_card``; the
mixin replaces the generic draft by this library's card (:func:`hf_backdoor_defense.hub.build_model_card`):
the defense and its paper, ``library_name: peft`` for adapters with the registration snippet MuScleLoRA needs,
and CACC / ASR from the last evaluation that logged them (``BackdoorEvalCallback``) unless given.

Example:
    >>> trainer.evaluate()                       # doctest: +SKIP
    >>> trainer.create_model_card(dataset_name="rotten_tomatoes", attack="badnets")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DefenseModelCardMixin", "last_backdoor_metrics"]

_METRICS = ("cacc", "asr", "lfr")


def last_backdoor_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"cacc": ..., "asr": ...}`` of the last log entry holding an evaluation's CACC or ASR (``{}`` if none)."""
    for entry in reversed(log_history):
        found = {name: entry[key] for key in entry for name in _METRICS
                 if key.endswith(f"_{name}") and isinstance(entry[key], (int, float))}
        if found:
            return {name: float(found[name]) for name in _METRICS if name in found}
    return {}


class DefenseModelCardMixin:
    """Mix into a ``transformers.Trainer`` (before it): ``create_model_card`` writes this library's card.

    Class attributes: ``_defense`` (a key of :data:`hf_backdoor_defense.hub.DEFENSE_PAPERS`, or ``None``),
    ``_tag_names`` (added to the card's tags) and ``_notice`` (a bold paragraph under the title).
    """

    _defense: str | None = None
    _notice: str | None = None
    _tag_names: list[str] = []

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, *, dataset: str | None = None,
                          attack: str | None = None, metrics: Mapping[str, float] | None = None,
                          license: str | None = None, **_ignored: Any) -> None:
        """Write ``README.md`` into ``args.output_dir`` (main process only).

        Args:
            model_name: Repository name shown in the card when no Hub repository is set.
            dataset_name / dataset: The dataset trained or evaluated on (TRL's and transformers' names).
            tags: More tags.
            attack: The attack the metrics were measured against.
            metrics: e.g. ``{"cacc": 0.91, "asr": 0.08}``; default: the last evaluation's (see module docs).
            license: License identifier for the metadata.
        """
        if not self.is_world_process_zero():
            return
        from ..hub import _card_kwargs_from_model, write_model_card

        model = self.accelerator.unwrap_model(self.model)
        adapter = getattr(model, "active_adapter", "default")
        found = _card_kwargs_from_model(model, adapter if isinstance(adapter, str) else "default")
        extra = [tags] if isinstance(tags, str) else list(tags or [])
        write_model_card(
            self.args.output_dir,
            repo_id=getattr(self, "hub_model_id", None) or self.args.hub_model_id or model_name,
            defense=self._defense,
            metrics=dict(metrics) if metrics is not None else last_backdoor_metrics(self.state.log_history),
            attack=attack,
            dataset=dataset_name or dataset,
            extra_tags=[*self._tag_names, *extra],
            license=license,
            notice=self._notice,
            **found,
        )
