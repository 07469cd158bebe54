"""The W2SDefense teacher (kept importable from here; it lives in :mod:`hf_backdoor_defense.models.teacher`)."""

from __future__ import annotations

from ..models.teacher import W2STeacher, W2STeacherConfig, train_teacher  # noqa: F401

__all__ = ["W2STeacher", "W2STeacherConfig", "train_teacher"]
