"""Knowledge-distillation losses and the Distiller that turns features into named loss terms."""

from __future__ import annotations

from meta_kd_sr.distill.distiller import Distiller
from meta_kd_sr.distill.kdloss import KDLoss
from meta_kd_sr.distill.losses import (
    ATLoss,
    FAKDLoss,
    FitNetLoss,
    FSPLoss,
    OutputLoss,
    at_loss,
    attention_map,
    fakd_loss,
    fitnet_loss,
    fsp_loss,
    fsp_matrix,
    output_loss,
    spatial_affinity,
)

__all__ = [
    "ATLoss",
    "Distiller",
    "FAKDLoss",
    "FSPLoss",
    "FitNetLoss",
    "KDLoss",
    "OutputLoss",
    "at_loss",
    "attention_map",
    "fakd_loss",
    "fitnet_loss",
    "fsp_loss",
    "fsp_matrix",
    "output_loss",
    "spatial_affinity",
]

try:
    from meta_kd_sr.distill.krnet import KRNetLoss
except ModuleNotFoundError as err:  # only a missing krnet module is tolerated, not a broken one
    if err.name != "meta_kd_sr.distill.krnet":
        raise
else:
    __all__ += ["KRNetLoss"]
