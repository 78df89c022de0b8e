"""``python -m meta_kd_sr.train`` is ``meta-kd-sr-train``."""

from __future__ import annotations

from meta_kd_sr.cli.train import main

if __name__ == "__main__":
    main()
