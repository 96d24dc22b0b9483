"""Losses: deepIBL's six SARE kernels and NetVLAD's triplet, each named after its MATLAB file.

| MATLAB file | function | CLI name |
|---|---|---|
| trainGaussKernalInd.m | gauss_kernal_ind | sare-ind |
| trainGaussKernalJoint.m | gauss_kernal_joint | sare-joint |
| trainCauchyKernelInd.m | cauchy_kernel_ind | cauchy-ind |
| trainCauchyKernelJoint.m | cauchy_kernel_joint | cauchy-joint |
| trainExpKernalInd.m | exp_kernal_ind | exp-ind |
| trainExpKernalJoint.m | exp_kernal_joint | exp-joint |
| trainWeakly.m | triplet_weakly | triplet |
"""
from __future__ import annotations

from torch import Tensor

from .sare import (cauchy_kernel_ind, cauchy_kernel_joint, exp_kernal_ind, exp_kernal_joint, gauss_kernal_ind,
                   gauss_kernal_joint)
from .triplet import triplet_weakly

# MATLAB training-file name -> (loss, CLI name)
MATLAB_LOSSES = {
    "trainGaussKernalInd": (gauss_kernal_ind, "sare-ind"),
    "trainGaussKernalJoint": (gauss_kernal_joint, "sare-joint"),
    "trainCauchyKernelInd": (cauchy_kernel_ind, "cauchy-ind"),
    "trainCauchyKernelJoint": (cauchy_kernel_joint, "cauchy-joint"),
    "trainExpKernalInd": (exp_kernal_ind, "exp-ind"),
    "trainExpKernalJoint": (exp_kernal_joint, "exp-joint"),
    "trainWeakly": (triplet_weakly, "triplet"),
}
LOSSES = {cli: fn for fn, cli in MATLAB_LOSSES.values()}


def tuple_loss(loss, feats: Tensor) -> Tensor:
    """Loss of one tuple given as rows [query, positive, negatives...] (deepIBL's ``feats`` columns)."""
    return loss(feats[0], feats[1], feats[2:])


__all__ = ["gauss_kernal_ind", "gauss_kernal_joint", "cauchy_kernel_ind", "cauchy_kernel_joint", "exp_kernal_ind",
           "exp_kernal_joint", "triplet_weakly", "MATLAB_LOSSES", "LOSSES", "tuple_loss"]
