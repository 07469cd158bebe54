"""Pure tensor math of MuScleLoRA's gradient alignment (no Trainer, no distributed code).

For one trainable tensor with training gradient ``g`` and clean-reference gradient ``g_c`` (both flattened):

    g_a = |<g, g_c>| / ||g_c||^2 * g_c                     projection onto g_c, sign forced positive
    projection  if ||g_c|| > eps and reference_loss > min_reference_loss:   g_a
                (min_reference_loss == 0 is pure projection: also at a reference loss of exactly 0)
    mix         elif mu > 0:                                                  (1 - mu) g_a + mu g
    raw         otherwise:                                                    g

With ``vanishing="skip"`` (our option, not the paper's) a tensor whose reference gradient vanishes
(``||g_c|| <= eps``) and that no mix applies to gets a zero gradient ("skip") instead of the raw ``g``: once
the reference set is memorised its gradient is often exactly zero, and the raw fallback then lets the
poisoned gradient through unaligned.

``mu`` comes from :func:`mixing_ratio`, which is zero before ``alignment_start_epoch`` and grows linearly to
``max_raw_gradient_ratio`` at the end of training.

Example:
    >>> import torch
    >>> out = align_gradient(torch.tensor([1.0, 1.0]), torch.tensor([-2.0, 0.0]), reference_loss=1.0)
    >>> out.mode, out.gradient.tolist()
    ('projection', [-1.0, 0.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..options import GATES  # noqa: F401  (declared in options; importable from here as before)

MODES = ("projection", "mix", "raw", "skip")
VANISHING_CHOICES = ("raw", "skip")


@dataclass
class AlignmentResult:
    """The aligned gradient of one tensor and what happened to it.

    Args:
        gradient: the new gradient, same shape and dtype as the training gradient.
        mode: one of ``"projection"``, ``"mix"``, ``"raw"`` or ``"skip"``.
        cosine: cosine similarity between the training and the reference gradient (0 when either is zero).
    """

    gradient: torch.Tensor
    mode: str
    cosine: float


def mixing_ratio(epoch: float, num_epochs: float, start_epoch: float, max_ratio: float) -> float:
    """Share ``mu`` of the raw gradient mixed into the projected one at ``epoch``.

    ``mu = max_ratio * (epoch - start_epoch) / (num_epochs - start_epoch)``, clamped to ``[0, max_ratio]``;
    0 when ``max_ratio`` is 0 or ``epoch < start_epoch``.

    Example:
        >>> mixing_ratio(epoch=2.0, num_epochs=3.0, start_epoch=1.0, max_ratio=0.1)
        0.05
    """
    if max_ratio <= 0 or epoch < start_epoch:
        return 0.0
    span = num_epochs - start_epoch
    if span <= 0:
        return float(max_ratio)
    return float(min(max_ratio, max(0.0, max_ratio * (epoch - start_epoch) / span)))


def align_gradient(
    grad: torch.Tensor,
    reference_grad: torch.Tensor,
    *,
    reference_loss: float,
    min_reference_loss: float = 0.0,
    mu: float = 0.0,
    eps: float = 1e-12,
    vanishing: str = "raw",
    gate_open: bool | None = None,
) -> AlignmentResult:
    """Align one training gradient with the clean reference gradient (see the module docstring).

    The inputs are not modified. The math runs in float32 (or float64 if given) on flattened views and the
    result is cast back to ``grad``'s dtype and shape. When ``||g_c|| <= eps`` the projection is taken as
    zero, so a "mix" step then keeps only ``mu * g``.

    Args:
        grad: the training gradient ``g`` of one tensor.
        reference_grad: the reference gradient ``g_c`` of the same tensor.
        reference_loss: loss of the reference batch (the same value on every process).
        min_reference_loss: project only while ``reference_loss`` is above this.
        mu: share of the raw gradient used in "mix" mode (from :func:`mixing_ratio`).
        eps: a reference gradient norm at or below this counts as zero.
        vanishing: ``"raw"`` (the paper) keeps ``g`` for a tensor whose reference gradient vanished and that
            is not mixed; ``"skip"`` gives it a zero gradient instead.
        gate_open: ``None`` decides "vanished" from this tensor's norm (``||g_c|| <= eps``); ``True`` /
            ``False`` is the decision taken for all tensors at once (the global gate). With ``True`` a tensor
            whose own ``g_c`` is zero is projected onto zero.

    Example:
        >>> import torch
        >>> align_gradient(torch.ones(2), torch.ones(2), reference_loss=0.1, min_reference_loss=0.4).mode
        'raw'
    """
    if vanishing not in VANISHING_CHOICES:
        raise ValueError(f"vanishing must be one of {VANISHING_CHOICES}, got {vanishing!r}.")
    if grad.shape != reference_grad.shape:
        raise ValueError(
            f"grad has shape {tuple(grad.shape)} but reference_grad has {tuple(reference_grad.shape)}"
        )
    work_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    g = grad.detach().reshape(-1).to(work_dtype)
    gc = reference_grad.detach().reshape(-1).to(work_dtype)
    gc_norm_sq = torch.dot(gc, gc)
    gc_norm = gc_norm_sq.sqrt()
    dot = torch.dot(g, gc)
    gc_norm_value = gc_norm.item()  # one read per tensor: this runs for every trainable tensor at every step
    denom = g.norm().item() * gc_norm_value
    cosine = dot.item() / denom if denom > 0 else 0.0

    alive = gc_norm_value > eps if gate_open is None else bool(gate_open)
    if alive and gc_norm_value > 0:
        projected = (dot.abs() / gc_norm_sq) * gc
    else:
        projected = torch.zeros_like(gc)

    # A fitted reference batch can have a float32 loss of exactly 0 while its gradient is still non-zero; with
    # min_reference_loss == 0 ("pure projection") that must not fall back to the raw gradient.
    loss_allows_projection = reference_loss > min_reference_loss or min_reference_loss <= 0
    if alive and loss_allows_projection:
        new, mode = projected, "projection"
    elif mu > 0:
        new, mode = (1.0 - mu) * projected + mu * g, "mix"
    elif vanishing == "skip" and not alive:
        new, mode = torch.zeros_like(g), "skip"
    else:
        new, mode = g, "raw"
    return AlignmentResult(gradient=new.to(grad.dtype).reshape(grad.shape), mode=mode, cosine=cosine)
