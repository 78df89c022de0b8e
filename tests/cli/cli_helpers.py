"""Compose the real Hydra config for tests (shared by the tests in this folder; see ``helpers``)."""

from __future__ import annotations

from helpers.train_config import FAST, compose_train

__all__ = ["FAST", "compose_train"]
