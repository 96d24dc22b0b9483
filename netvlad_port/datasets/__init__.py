"""Datasets: MATLAB's ``dbBase`` family, VG folders, Patch-NetVLAD ground truth, synthetic data,
and the registry of dataset families by name (``pitts30k-test``, ``tokyo247``, ...; plug-ins add
theirs, e.g. the GCL wing's ``msls``)."""

from .db_base import DB_STRUCT_FIELDS, DatasetError, DbBase, load_db_struct, write_db_struct
from .folders import from_npz, from_vg_folder
from .registry import DATASETS, DatasetFamily, dataset_names, open_dataset, register_dataset, training_splits
from .standard import DbPitts, DbTokyo247, DbTokyoTimeMachine
from .synthetic import load_synthetic, make_synthetic

__all__ = [
    "DB_STRUCT_FIELDS",
    "DatasetError",
    "DbBase",
    "load_db_struct",
    "write_db_struct",
    "from_npz",
    "from_vg_folder",
    "DATASETS",
    "DatasetFamily",
    "dataset_names",
    "open_dataset",
    "register_dataset",
    "training_splits",
    "DbPitts",
    "DbTokyo247",
    "DbTokyoTimeMachine",
    "load_synthetic",
    "make_synthetic",
]
