"""Meta knowledge distillation for single-image super-resolution."""

from __future__ import annotations

__version__ = "0.1.0"
