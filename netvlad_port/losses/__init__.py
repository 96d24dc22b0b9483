"""Losses: deepIBL's six SARE kernels and NetVLAD's triplet, each named after its MATLAB file.

| MATLAB file | function | ``--loss`` |
|---|---|---|
| trainGaussKernalInd.m | gauss_kernal_ind | sare-ind |
| trainGaussKernalJoint.m | gauss_kernal_joint | sare-joint |
| trainCauchyKernelInd.m | cauchy_kernel_ind | cauchy-ind |
| trainCauchyKernelJoint.m | cauchy_kernel_joint | cauchy-joint |
| trainExpKernalInd.m | exp_kernal_ind | exp-ind |
| trainExpKernalJoint.m | exp_kernal_joint | exp-joint |
| trainWeakly.m | triplet_weakly | triplet |

:data:`LOSSES` is the single list of choices (CLI, docs, trainer); add one with :func:`register_loss`.
The plug-in wings add theirs: ``plugins/gcl/loss.py`` (gcl, contrastive) and ``plugins/stml/losses.py`` (stml,
triplet-stml, triplet-nanne).
"""

from .base import LOSSES, LossEntry, LossOutput, by_matlab_name, register_loss, tuple_loss
from .sare import (
    cauchy_kernel_ind,
    cauchy_kernel_joint,
    exp_kernal_ind,
    exp_kernal_joint,
    gauss_kernal_ind,
    gauss_kernal_joint,
)
from .triplet import triplet_weakly

__all__ = [
    "LOSSES",
    "LossEntry",
    "LossOutput",
    "by_matlab_name",
    "register_loss",
    "tuple_loss",
    "gauss_kernal_ind",
    "gauss_kernal_joint",
    "cauchy_kernel_ind",
    "cauchy_kernel_joint",
    "exp_kernal_ind",
    "exp_kernal_joint",
    "triplet_weakly",
]
