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
| (STML, utils/custom_loss.py) | stml, triplet_stml | stml, triplet-stml |
| (Nanne's pytorch-NetVlad, main.py) | triplet_nanne | triplet-nanne |

:data:`LOSSES` is the single list of choices (CLI, docs, trainer); add one with :func:`register_loss`.
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
from .stml import stml, stml_loss, triplet_nanne, triplet_stml
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
    "stml",
    "stml_loss",
    "triplet_stml",
    "triplet_nanne",
]
