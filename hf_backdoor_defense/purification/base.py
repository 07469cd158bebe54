"""Shared machinery of the weight-space purifiers: pairing suspect and reference parameters,
ranking dimensions, applying masks to a copy, and composing purifiers.

A purifier never touches its inputs: it builds a plan of ``(name, suspect tensor, reference tensor)``
pairs, scores the dimensions, and writes the purified values into a deep copy of the suspect.

Two modes:

* **full model**: ``suspect`` and ``reference`` are two ``PreTrainedModel`` of the same architecture
  (the fine-tuned model and the pre-trained one). Parameters that are not under the model's
  ``base_model_prefix`` (the task head: ``classifier.*``, ``score.*``) or that the reference does not
  have are the *head*: they have no pre-trained value, and the purifier's ``head`` field decides what
  happens to them (``"keep"`` by default).
* **adapter**: ``suspect`` is a :class:`peft.PeftModel` and ``reference`` is ``None``: the reference is
  "no adapter", so every adapter factor entry has reference value 0. ``modules_to_save`` copies (the
  task head of a ``SEQ_CLS`` adapter) are the head; their reference is the base model's original module.

Example:
    >>> from hf_backdoor_defense.purification import FineMixing, FinePurifying, compose
    >>> purifier = compose(FineMixing(ratio=0.3, mask="magnitude"), FinePurifying(ratio=0.2))
    >>> # result = purifier.purify(suspect, reference, clean_dataset, tokenizer=tokenizer)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..options import HEAD_MODES, RATIO_BASES, SCOPES, check_choice

__all__ = [
    "HEAD_MODES",
    "RATIO_BASES",
    "SCOPES",
    "ParameterPlan",
    "PurificationResult",
    "Purifier",
    "Sequential",
    "apply_masks",
    "build_plan",
    "check_ratio",
    "compose",
    "input_embedding_names",
    "moved_masks",
    "select_top",
]

_CHUNK = 1 << 18  # elements per chunk of the in-place passes (bounds temporary memory)


@dataclass
class PurificationResult:
    """What a purifier returns.

    Args:
        model: The purified model: a new object, never the ``suspect`` passed in.
        report: Plain-JSON description: ``method``, ``ratio``, ``mode`` (``"full"`` or ``"adapter"``),
            ``dims_reset`` per tensor, ``dims_reset_total``, ``dims_total``, ``tokens_reset`` (E-PUR),
            ``head`` treatment and parameters, ``timings`` in seconds, and ``steps`` for compositions.
    """

    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)


def check_ratio(value: float, name: str = "ratio") -> float:
    """Raise ``ValueError`` naming ``name`` unless ``0 <= value <= 1``."""
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.") from err
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must lie in [0, 1] (the fraction of dimensions reset), got {value}.")
    return value


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


@dataclass
class ParameterPlan:
    """The pairing of suspect parameters with their reference values.

    Args:
        mode: ``"full"`` or ``"adapter"``.
        body: Names ranked by the purifier (suspect parameter names).
        head: Names of the head parameters (no pre-trained value).
        reference_names: For each body or head name, the reference parameter name, or ``None`` for
            "zero" (adapter factors) or "absent" (a head the reference lacks).
        suspect_params: The suspect's parameters by name (read only).
        reference_params: The reference's parameters by name (read only; empty in adapter mode, where
            head references point into ``suspect_params``).
    """

    mode: str
    body: list[str]
    head: list[str]
    reference_names: dict[str, str | None]
    suspect_params: dict[str, torch.Tensor]
    reference_params: dict[str, torch.Tensor]

    def reference_value(self, name: str) -> torch.Tensor | None:
        """The reference tensor of ``name`` (``None`` means: no value; for adapter factors, zero)."""
        ref_name = self.reference_names.get(name)
        if ref_name is None:
            return None
        source = self.reference_params if self.mode == "full" else self.suspect_params
        return source[ref_name]

    def delta(self, name: str) -> torch.Tensor:
        """``θ_B − θ₀`` of a body parameter, as a new fp32 tensor."""
        theta_b = self.suspect_params[name].detach().float()
        ref = self.reference_value(name)
        return theta_b.clone() if ref is None else theta_b - ref.detach().to(theta_b.device).float()

    @property
    def dims_total(self) -> int:
        return sum(self.suspect_params[n].numel() for n in self.body)

    def iter_body(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.body:
            yield name, self.suspect_params[name]


def _adapter_plan(suspect: nn.Module, head_names: tuple[str, ...]) -> ParameterPlan:
    adapter = suspect.active_adapter
    if isinstance(adapter, (list, tuple)):
        if len(adapter) != 1:
            raise ValueError(f"`suspect`: purify one adapter at a time, found active adapters {adapter}.")
        adapter = adapter[0]
    prefix = getattr(suspect.base_model, "prefix", None)
    if not prefix:
        raise ValueError(
            f"`suspect`: the PEFT tuner {type(suspect.base_model).__name__} has no parameter prefix; "
            "only additive adapters (LoRA, MuScleLoRA, ...) can be purified."
        )
    params = dict(suspect.named_parameters())
    body, head, refs = [], [], {}
    for name in params:
        parts = name.split(".")
        if f"modules_to_save.{adapter}." in name or any(h and h in name for h in head_names):
            head.append(name)
            original = name.replace(f"modules_to_save.{adapter}.", "original_module.")
            refs[name] = original if original in params else None
        elif adapter in parts and any(p.startswith(prefix) for p in parts):
            body.append(name)
            refs[name] = None  # reference = no adapter = 0
    if not body:
        raise ValueError(f"`suspect`: no parameters of adapter {adapter!r} (prefix {prefix!r}) were found.")
    return ParameterPlan("adapter", body, head, refs, params, {})


def _architecture(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def build_plan(
    suspect: nn.Module, reference: nn.Module | None, *, head_names: tuple[str, ...] = ()
) -> ParameterPlan:
    """Pair every suspect parameter with its reference; raise ``ValueError`` on a mismatch.

    Args:
        suspect: The fine-tuned (possibly backdoored) model, or a ``PeftModel``.
        reference: The pre-trained model of the same architecture; ``None`` for an adapter suspect.
        head_names: Extra substrings marking head parameters (besides those outside ``base_model_prefix``).
    """
    if suspect is None:
        raise ValueError("`suspect` is None: pass the fine-tuned model to purify.")
    if _is_peft_model(suspect):
        if reference is not None:
            raise ValueError(
                "`reference` must be None when `suspect` is a PeftModel: the reference of an adapter is "
                "'no adapter' (the base model inside the PeftModel)."
            )
        return _adapter_plan(suspect, head_names)
    if reference is None:
        raise ValueError("`reference` is None: pass the pre-trained model the suspect was fine-tuned from.")
    if _is_peft_model(reference):
        raise ValueError("`reference` is a PeftModel but `suspect` is not: pass the plain pre-trained model.")
    arch_s, arch_r = _architecture(suspect), _architecture(reference)
    if arch_s != arch_r:
        raise ValueError(
            f"`reference`: architecture {arch_r!r} differs from the suspect's {arch_s!r}; "
            "load the pre-trained checkpoint the suspect was fine-tuned from."
        )
    s_params = dict(suspect.named_parameters())
    r_params = dict(reference.named_parameters())
    prefix = getattr(suspect, "base_model_prefix", "") or ""
    r_prefix = getattr(reference, "base_model_prefix", "") or ""
    r_has_prefix = bool(r_prefix) and any(n.startswith(r_prefix + ".") for n in r_params)
    body, head, refs = [], [], {}
    for name, param in s_params.items():
        in_base = not prefix or name.startswith(prefix + ".")
        # Map a name onto the reference: same name, or the reference is the bare base model.
        ref_name = name
        if ref_name not in r_params and in_base and prefix and not r_has_prefix:
            ref_name = name[len(prefix) + 1 :]
        ref_name = ref_name if ref_name in r_params else None
        is_head = (not in_base) or ref_name is None or any(h and h in name for h in head_names)
        if ref_name is not None and tuple(r_params[ref_name].shape) != tuple(param.shape):
            if is_head:
                ref_name = None  # e.g. a head with another number of labels: no usable reference
            else:
                raise ValueError(
                    f"`reference`: parameter {name!r} has shape {tuple(r_params[ref_name].shape)} in the "
                    f"reference but {tuple(param.shape)} in the suspect; the two models differ in size."
                )
        (head if is_head else body).append(name)
        refs[name] = ref_name
    if not body:
        raise ValueError("`reference`: no parameter of the suspect has a reference value; check the models.")
    return ParameterPlan("full", body, head, refs, s_params, r_params)


def _bisect_threshold(scores: Mapping[str, torch.Tensor], k: int, iterations: int = 48) -> float:
    """Largest ``t`` with ``#{s >= t} >= k``, by bisection over all tensors (slow fallback)."""
    lo = min(float(s.min()) for s in scores.values())
    hi = max(float(s.max()) for s in scores.values())
    for _ in range(iterations):
        mid = lo + (hi - lo) / 2
        if mid in (lo, hi):
            break
        if sum(int((s >= mid).sum()) for s in scores.values()) >= k:
            lo = mid
        else:
            hi = mid
    return min(float(s[s >= lo].min()) for s in scores.values() if bool((s >= lo).any()))


def _kth_largest_threshold(scores: Mapping[str, torch.Tensor], k: int, sample_size: int = 1 << 18) -> float:
    """The k-th largest value over all tensors, without concatenating them.

    A uniform sample brackets the k-th value; one pass counts the values above the bracket and gathers the
    (few) values inside it, whose exact order statistic is the answer. Falls back to bisection if the
    bracket misses.
    """
    total = sum(s.numel() for s in scores.values())
    gen = torch.Generator().manual_seed(0)
    parts = []
    for s in scores.values():
        m = max(1, round(sample_size * s.numel() / total))
        parts.append(s.reshape(-1)[torch.randint(s.numel(), (m,), generator=gen)].float())
    sample = torch.cat(parts)
    q = 1.0 - k / total
    margin = 6.0 * (q * (1 - q) / sample.numel()) ** 0.5 + 2.0 / sample.numel()
    lo_t = float(torch.quantile(sample, max(0.0, q - margin)))
    hi_t = float(torch.quantile(sample, min(1.0, q + margin)))
    above = sum(int((s > hi_t).sum()) for s in scores.values())
    if above < k:
        between = sum(int(((s > lo_t) & (s <= hi_t)).sum()) for s in scores.values())
        if above + between < k:
            # The k-th value is at most lo_t; with ties at lo_t (e.g. many zero scores) it is lo_t itself.
            if above + between + sum(int((s == lo_t).sum()) for s in scores.values()) >= k:
                return lo_t
        elif between <= max(1 << 22, total // 8):  # gather only a small slice
            inside = torch.cat([s[(s > lo_t) & (s <= hi_t)].float() for s in scores.values()])
            return float(torch.kthvalue(inside, between - (k - above) + 1).values)
    return _bisect_threshold(scores, k)


def moved_masks(plan: ParameterPlan, names: list[str]) -> dict[str, torch.Tensor]:
    """``δ ≠ 0`` for each of ``names``: the dimensions fine-tuning changed (one byte per dimension)."""
    return {n: plan.delta(n) != 0 for n in names}


def input_embedding_names(plan: ParameterPlan) -> list[str]:
    """The body parameter holding the suspect's input (word) embeddings, if it is ranked (full models)."""
    getter = getattr(_owner_of(plan), "get_input_embeddings", None)
    try:
        weight = getattr(getter(), "weight", None) if getter is not None else None
    except (AttributeError, NotImplementedError):
        weight = None
    return [n for n in plan.body if weight is not None and plan.suspect_params[n] is weight]


def _sink(scores: Mapping[str, torch.Tensor], eligible: Mapping[str, torch.Tensor]) -> None:
    """Overwrite, in place, the scores of ineligible dimensions with a value below every eligible score."""
    lows = [float(s[eligible[n]].min()) for n, s in scores.items() if bool(eligible[n].any())]
    if not lows:
        return
    low = min(lows)
    sink = low - max(1.0, abs(low))
    for n, s in scores.items():
        s.masked_fill_(~eligible[n].to(s.device), sink)


def select_top(
    scores: Mapping[str, torch.Tensor], ratio: float, scope: str = "global",
    eligible: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks of the ``ratio`` fraction of dimensions with the largest scores.

    Exactly ``round(ratio * n)`` dimensions are selected (ties broken in tensor order), where ``n`` counts
    every dimension, or with ``eligible`` (boolean masks of the scores' shapes) only the eligible ones: then
    only eligible dimensions are selected, and the scores of the others are overwritten in place.
    ``scope="global"`` ranks all tensors together; ``"per_tensor"`` selects ``ratio`` of each tensor.

    Example:
        >>> import torch
        >>> masks = select_top({"w": torch.tensor([0.1, 3.0, 2.0, 0.5])}, 0.5)
        >>> masks["w"].tolist()
        [False, True, True, False]
        >>> select_top({"w": torch.tensor([0.1, 3.0, 2.0, 0.5])}, 0.5,
        ...            eligible={"w": torch.tensor([True, False, True, True])})["w"].tolist()
        [False, False, True, True]
    """
    check_ratio(ratio)
    check_choice(scope, "scope", SCOPES)
    if eligible is not None:
        missing = [n for n in scores if n not in eligible or tuple(eligible[n].shape) != tuple(scores[n].shape)]
        if missing:
            raise ValueError(f"`eligible` needs a mask of each score's shape; missing or mis-shaped: {missing[:5]}")
    if scope == "per_tensor":
        out = {}
        for name, s in scores.items():
            out.update(select_top({name: s}, ratio, "global", None if eligible is None else {name: eligible[name]}))
        return out
    numel = sum(s.numel() for s in scores.values())
    total = numel if eligible is None else sum(int(e.sum()) for e in eligible.values())
    k = int(round(ratio * total))
    if k == 0:
        return {n: torch.zeros_like(s, dtype=torch.bool) for n, s in scores.items()}
    if eligible is not None:
        if k >= total:
            return {n: eligible[n].to(s.device, torch.bool).clone() for n, s in scores.items()}
        _sink(scores, eligible)  # the k largest are now eligible, and a tie at the threshold is too
    elif k >= total:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    t = _kth_largest_threshold(scores, k)
    masks = {n: s > t for n, s in scores.items()}
    remaining = k - sum(int(m.sum()) for m in masks.values())
    for name, s in scores.items():
        if remaining <= 0:
            break
        flat_mask = masks[name].view(-1)
        for start, chunk in zip(range(0, s.numel(), _CHUNK), s.reshape(-1).split(_CHUNK)):
            ties = (chunk == t).nonzero().squeeze(1)[:remaining]  # bounded by the chunk size
            if ties.numel():
                flat_mask[start + ties] = True
                remaining -= ties.numel()
            if remaining <= 0:
                break
    return masks


def apply_masks(
    plan: ParameterPlan, masks: Mapping[str, torch.Tensor], head: str = "keep"
) -> tuple[nn.Module, dict[str, int]]:
    """Deep-copy the suspect and reset the masked dimensions to their reference values.

    Returns the new model and the number of dimensions reset per tensor. ``head="reinit"`` sets head
    parameters to the reference's value (a fresh initialisation: the reference was loaded with a new
    head; for adapters, the base model's original module); heads without a reference value are kept.
    """
    suspect = _owner_of(plan)
    model = copy.deepcopy(suspect)
    out_params = dict(model.named_parameters())
    counts: dict[str, int] = {}
    with torch.no_grad():
        for name, mask in masks.items():
            param = out_params[name]
            mask = mask.to(param.device)
            ref = plan.reference_value(name)
            if ref is None:
                param.masked_fill_(mask, 0)
            else:  # chunk by chunk: temporaries stay small
                ref = ref.to(param.device, param.dtype).reshape(-1)
                flat = param.view(-1)
                for start in range(0, flat.numel(), _CHUNK):
                    part = slice(start, start + _CHUNK)
                    flat[part] = torch.where(mask.reshape(-1)[part], ref[part], flat[part])
            counts[name] = int(mask.sum())
        if head == "reinit":
            for name in plan.head:
                ref = plan.reference_value(name)
                if ref is not None:
                    out_params[name].copy_(ref.to(out_params[name].device, out_params[name].dtype))
    return model, counts


def _owner_of(plan: ParameterPlan) -> nn.Module:
    return plan._owner  # type: ignore[attr-defined]


class Purifier:
    """Base of every purifier: subclasses are dataclasses implementing :meth:`_purify`.

    ``purify`` checks the inputs, pairs the parameters and times the work; ``_purify`` returns
    ``(model, report)``.
    """

    method: str = "purifier"

    def purify(
        self,
        suspect: nn.Module,
        reference: nn.Module | None = None,
        clean_dataset: Any = None,
        *,
        tokenizer: Any = None,
    ) -> PurificationResult:
        """Purify ``suspect`` against ``reference``; neither is modified.

        Args:
            suspect: Fine-tuned (possibly backdoored) model, or a ``PeftModel`` whose active adapter is purified.
            reference: The pre-trained model (``None`` for an adapter).
            clean_dataset: Small trusted clean set (``datasets.Dataset`` with ``text``/``label`` or tokenised
                ``input_ids``/``labels``); required by the methods that need data.
            tokenizer: Tokenizer of the suspect; required with text data.
        """
        start = time.perf_counter()
        plan = build_plan(suspect, reference, head_names=tuple(getattr(self, "head_names", ()) or ()))
        plan._owner = suspect  # type: ignore[attr-defined]
        model, report = self._purify(plan, clean_dataset, tokenizer)
        report = {"method": self.method, "mode": plan.mode, **report}
        report.setdefault("timings", {})["total_s"] = round(time.perf_counter() - start, 4)
        return PurificationResult(model=model, report=report)

    def _purify(self, plan: ParameterPlan, clean_dataset: Any, tokenizer: Any) -> tuple[nn.Module, dict]:
        raise NotImplementedError

    def with_ratio(self, ratio: float) -> Purifier:
        """A copy with another ``ratio`` (used by :func:`~hf_backdoor_defense.purification.ratio_search`)."""
        if not any(f.name == "ratio" for f in dataclasses.fields(self)):
            raise ValueError(f"`purifier`: {type(self).__name__} has no `ratio` to search over.")
        return dataclasses.replace(self, ratio=check_ratio(ratio))

    def config_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, (int, float, str, bool, type(None), list, tuple)) else repr(value)
        return out


def head_report(plan: ParameterPlan, head: str) -> dict[str, Any]:
    return {"treatment": head, "parameters": list(plan.head)}


def reset_report(purifier: Purifier, plan: ParameterPlan, counts: dict[str, int], *, dims_total: int,
                 dims_moved: int, timings: dict[str, float], **extra: Any) -> dict[str, Any]:
    """The report of a purifier that resets a ratio of the ranked dimensions (Fine-mixing, Fine-purifying):
    what it was asked (ratio, config), what it reset per tensor out of how many dimensions and of how many that
    moved, the head treatment and the timings; ``extra`` adds the method's own entries."""
    return {
        "ratio": purifier.ratio,
        "config": purifier.config_dict(),
        "dims_reset": counts,
        "dims_reset_total": sum(counts.values()),
        "dims_total": dims_total,
        "dims_moved": dims_moved,
        "ratio_of": purifier.ratio_of,
        "tokens_reset": [],
        "head": head_report(plan, purifier.head),
        **extra,
        "timings": timings,
    }


class Sequential(Purifier):
    """Apply purifiers one after another (e.g. E-PUR, then Fine-purifying).

    Every step purifies the previous step's output against the same reference. ``with_ratio`` changes the
    ratio of the last step that has one.

    Example:
        >>> from hf_backdoor_defense.purification import EmbeddingPurification, FinePurifying, Sequential
        >>> chain = Sequential(EmbeddingPurification(num_tokens=100), FinePurifying(ratio=0.3))
        >>> chain.method
        'e-pur+fine-purifying'
    """

    def __init__(self, *purifiers: Purifier):
        if not purifiers:
            raise ValueError("`purifiers`: give at least one purifier to compose.")
        flat: list[Purifier] = []
        for p in purifiers:
            if not isinstance(p, Purifier):
                raise ValueError(f"`purifiers`: {p!r} is not a Purifier.")
            flat.extend(p.purifiers if isinstance(p, Sequential) else [p])
        self.purifiers = tuple(flat)
        self.method = "+".join(p.method for p in flat)

    def __repr__(self) -> str:
        return f"Sequential({', '.join(map(repr, self.purifiers))})"

    @property
    def ratio(self) -> float | None:
        for p in reversed(self.purifiers):
            if hasattr(p, "ratio"):
                return p.ratio
        return None

    def purify(self, suspect, reference=None, clean_dataset=None, *, tokenizer=None) -> PurificationResult:
        start = time.perf_counter()
        current, steps = suspect, []
        for p in self.purifiers:
            result = p.purify(current, reference, clean_dataset, tokenizer=tokenizer)
            if current is not suspect:
                del current
            current = result.model
            steps.append(result.report)
        report = {
            "method": self.method,
            "mode": steps[0]["mode"],
            "ratio": self.ratio,
            "steps": steps,
            "dims_reset_total": sum(s.get("dims_reset_total", 0) for s in steps),
            "tokens_reset": [t for s in steps for t in s.get("tokens_reset", [])],
            "timings": {"total_s": round(time.perf_counter() - start, 4)},
        }
        return PurificationResult(model=current, report=report)

    def with_ratio(self, ratio: float) -> Sequential:
        check_ratio(ratio)
        idx = max((i for i, p in enumerate(self.purifiers) if hasattr(p, "ratio")), default=None)
        if idx is None:
            raise ValueError("`purifier`: no step of this composition has a `ratio` to search over.")
        steps = list(self.purifiers)
        steps[idx] = steps[idx].with_ratio(ratio)
        return Sequential(*steps)

    def config_dict(self) -> dict[str, Any]:
        return {"steps": [{"method": p.method, **p.config_dict()} for p in self.purifiers]}


def compose(*purifiers: Purifier) -> Sequential:
    """``compose(a, b)`` applies ``a`` then ``b``; see :class:`Sequential`."""
    return Sequential(*purifiers)
