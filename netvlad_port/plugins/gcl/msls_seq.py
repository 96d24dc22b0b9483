"""MSLS's sequence tasks (mapillary_sls ``datasets/msls.py:67-75, 263-292``)."""

from __future__ import annotations

from ...datasets.db_base import DatasetError

TASKS = ("im2im", "im2seq", "seq2im", "seq2seq")


def check_task(task: str, seq_length: int | None) -> int:
    """The sequence length of ``task``: 1 for im2im, else an odd ``seq_length`` above 1 (``msls.py:31-32``)."""
    if task not in TASKS:
        raise DatasetError(f"--task {task}: expected one of {', '.join(TASKS)}")
    if task == "im2im":
        if seq_length not in (None, 1):
            raise DatasetError(f"--seq-length {seq_length}: im2im compares single images (length 1)")
        return 1
    if seq_length is None or seq_length < 3 or seq_length % 2 == 0:
        raise DatasetError(f"--seq-length {seq_length}: {task} needs an odd sequence length of 3 or more")
    return int(seq_length)


class SequenceView:
    def __init__(self, frames, task: str, seq_length: int):
        raise DatasetError(f"--task {task}: not available yet")
