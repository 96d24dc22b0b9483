"""When the learning rate drops and when a run stops early: MATLAB's rule (``trainWeakly``: at the start of
epoch e != 1 with rem(e, lrDownFreq) == 1 the lr is divided and the cache refresh interval multiplied by
lrDownFactor) or torch's ``StepLR`` stepped with the epoch number at the start of each epoch, as Nanne's
``main.py:509-511`` does (lr x 1/lrDownFactor at epochs lrDownFreq, 2 lrDownFreq, ...; the refresh interval
unchanged); and the PyTorch originals' early stop (``--patience``: Nanne ``main.py:513-533``, STML
``tasks/train.py:197-219,345``) ([docs/stml.md](../../docs/stml.md#training-and-the-demo))."""

from __future__ import annotations

LR_SCHEDULES = ("matlab", "steplr")


def lr_drops(e: int, schedule: str, freq: int) -> bool:
    """Whether the lr drops at the start of epoch ``e`` (1-based)."""
    if schedule == "steplr":  # StepLR.step(e): lr0 * gamma ** (e // step_size)
        return e % freq == 0
    return e != 1 and e % freq == 1


def out_of_patience(val_recalls: dict[int, list[float]], at: int, patience: int, test_every: int) -> bool:
    """The originals' early stop after a validation: the tests since the best one (a test is best when its
    recall@N, N the ``select_by`` position ``at``, beats every earlier test's, strictly) outnumber
    ``patience / test_every``. Off at patience 0."""
    if patience <= 0:
        return False
    best, not_improved = 0.0, 0
    for e in sorted(val_recalls):
        if val_recalls[e][at] > best:
            best, not_improved = val_recalls[e][at], 0
        else:
            not_improved += 1
    return not_improved > patience / test_every
