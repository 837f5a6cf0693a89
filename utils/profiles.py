"""Tuned defaults per built-in dataset, applied under the user's config file and flags."""

from __future__ import annotations

from typing import Any

DATASET_PROFILES: dict[str, dict[str, Any]] = {
    "toxic": {},
    "goemotions": {},
    "conference": {},
}
