"""Datasets: MATLAB's ``dbBase`` family, VG folders, Patch-NetVLAD ground truth, synthetic data."""
from .db_base import DB_STRUCT_FIELDS, DatasetError, DbBase, load_db_struct, write_db_struct
from .folders import from_npz, from_vg_folder
from .standard import DbPitts, DbTokyo247, DbTokyoTimeMachine

__all__ = ["DB_STRUCT_FIELDS", "DatasetError", "DbBase", "load_db_struct", "write_db_struct", "from_npz",
           "from_vg_folder", "DbPitts", "DbTokyo247", "DbTokyoTimeMachine"]
