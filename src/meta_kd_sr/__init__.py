"""Meta knowledge distillation for single-image super-resolution.

The subpackages, from the bottom up:

- ``runtime``: process mechanics (atomic writes, the NaN/inf policy, DDP by hand, console output);
- ``models``: plain ``nn.Module`` SR networks and checkpoint loading;
- ``data``: transforms, datasets, DataModules, MATLAB bicubic, the embedded photos;
- ``distill``: KD losses, KRNets and the ``Distiller``;
- ``meta``: the meta step and the training iteration (the only package that imports ``higher``);
- ``evaluation``: the SR protocol, inference helpers, memory planning, run reports;
- ``training``: the ``SRModule`` (Lightning), the frozen teacher, run safety and progress;
- ``cli``: the Hydra entry points (the only package that imports ``hydra``).
"""

from __future__ import annotations

__version__ = "0.1.0"
