"""STML's batch as tasks/train.py runs it (issue 21): the batch's tuples in one forward, so BatchNorm in
the attention modules sees the whole batch; and the best epoch by recall@1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

NEGS = (1, 3, 2)  # negatives of the three tuples


class Bank:
    """Step's inputs: image rows of a fixed random bank (db images, then queries)."""

    device = torch.device("cpu")

    def __init__(self, n: int):
        self.x = torch.rand(n, 3, 80, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 50

    def __call__(self, ids, shorter=None, flip=False):
        return self.x[list(ids)]


class Db:
    num_images = 20


class CountingTerm:
    """A loss term that records what it is called with and adds 0.01 x the sum of its images' masks."""

    name = "count"

    def __init__(self, catcher):
        self.catcher, self.calls = catcher, []

    def begin_batch(self, tuples):
        pass

    def __call__(self, tup, image_ids):
        self.calls.append(list(image_ids))
        return 0.01 * self.catcher.mask.sum()


def _net():
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN
    from netvlad_port.networks import insert_attention

    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=None, seed=3)
    torch.manual_seed(0)
    return SimpleNN(insert_attention(spec, ["deattention-v1", "se"])).double()


def _tuples():
    from netvlad_port.train.mining import TrainingTuple

    out, j = [], 4
    for k, n in enumerate(NEGS):
        out.append(TrainingTuple(k, k, np.arange(j, j + n)))
        j += n
    return out


def _bn(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def _step(model, forward: str, with_term: bool = False):
    from netvlad_port.losses import LOSSES
    from netvlad_port.plugins.stml.guidance import MaskCatcher, deattention_layer
    from netvlad_port.train.step import Step

    catcher = MaskCatcher(deattention_layer(model))
    masks = []
    hook = deattention_layer(model).block.mask.register_forward_hook(lambda m, i, o: masks.append(o.detach()))
    terms = [CountingTerm(catcher)] if with_term else []
    params = list(model.parameters())
    step = Step(model, 0, params, torch.optim.SGD(params, lr=0.01), LOSSES["triplet-stml"], {}, terms,
                Bank(Db.num_images + 3), "fp32", forward=forward)  # fmt: skip
    loss, _ = step(Db, _tuples(), np.zeros(3, bool))
    hook.remove()
    catcher.remove()
    return loss, masks, [p.grad.clone() for p in params], terms


def _reference(model):
    """tasks/train.py:42-83 by hand: input = [queries; positives; negatives] in one train-mode forward,
    TripletMarginLoss(0.1, p=2) summed over each query's negatives, divided by the batch's negatives."""
    from netvlad_port.plugins.stml.guidance import deattention_layer

    bank, tuples = Bank(Db.num_images + 3), _tuples()
    order = [Db.num_images + t.query for t in tuples] + [t.positive for t in tuples]
    order += [int(n) for t in tuples for n in t.negatives]
    masks = []
    hook = deattention_layer(model).block.mask.register_forward_hook(lambda m, i, o: masks.append(o.detach()))
    model.train()
    out = model.run(bank.x[order]).flatten(1)
    hook.remove()
    b = len(tuples)
    q, p, n = out[:b], out[b : 2 * b], out[2 * b :]
    loss, at = 0, 0
    for i, count in enumerate(NEGS):
        for _ in range(count):
            loss = loss + F.triplet_margin_loss(q[i : i + 1], p[i : i + 1], n[at : at + 1], margin=0.1, p=2)
            at += 1
    loss = loss / sum(NEGS)
    loss.backward()
    return masks[0], order, [p.grad.clone() for p in model.parameters()]


def test_batched_forward_equals_one_whole_batch_pass_and_differs_from_per_tuple():
    model = _net()
    ref, per_tuple = copy.deepcopy(model), copy.deepcopy(model)
    loss, masks, grads, _ = _step(model, "batch")
    ref_mask, order, ref_grads = _reference(ref)
    assert len(masks) == 1  # one forward for the batch
    ours = [Db.num_images + t.query if k == 0 else t.positive if k == 1 else int(t.negatives[k - 2])
            for t in _tuples() for k in range(2 + len(t.negatives))]  # fmt: skip
    assert torch.allclose(masks[0], ref_mask[[order.index(i) for i in ours]], rtol=1e-9, atol=1e-12)
    bn = _bn(model)
    assert len(bn) >= 4
    for k, v in _bn(ref).items():
        assert torch.allclose(bn[k], v, rtol=1e-9, atol=1e-12), k
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-12)
    _, tuple_masks, _, _ = _step(per_tuple, "tuple")
    assert len(tuple_masks) == 3 and [m.shape[0] for m in tuple_masks] == [2 + n for n in NEGS]
    assert not all(torch.allclose(bn[k], v) for k, v in _bn(per_tuple).items())


def test_a_term_sees_the_whole_pass_once():
    _, _, _, (term,) = _step(_net(), "batch", with_term=True)
    assert len(term.calls) == 1 and len(term.calls[0]) == sum(2 + n for n in NEGS)
    _, _, _, (term,) = _step(_net(), "tuple", with_term=True)
    assert [len(c) for c in term.calls] == [2 + n for n in NEGS]


def _history(recalls: dict[int, list[float]]):
    from netvlad_port.train import History

    h = History()
    h.val_recall = recalls
    return h


@pytest.mark.parametrize("select_by, best", [(5, 2), (1, 3), (10, 1)])
def test_the_best_epoch_follows_select_by(select_by, best):
    from netvlad_port.train import pick_best_epoch

    ns = (1, 5, 10)
    h = _history({1: [0.40, 0.60, 0.90], 2: [0.41, 0.70, 0.80], 3: [0.50, 0.65, 0.85]})
    assert pick_best_epoch(h, ns, select_by) == best
    assert pick_best_epoch(h, ns) == 2  # getBestEpoch: recall@5


def test_select_by_is_an_option_and_may_change_on_resume():
    from click.testing import CliRunner

    from netvlad_port.cli import main
    from netvlad_port.errors import NetVladPortError
    from netvlad_port.train import TrainOptions

    out = CliRunner().invoke(main, ["train", "--help"]).output
    assert all(f in out for f in ("--select-by", "--forward", "--step-queries", "--val-protocol"))
    o = TrainOptions(select_by=5).with_changes({"select_by": 1}, "run")
    assert o.select_by == 1
    with pytest.raises(NetVladPortError, match="forward"):
        TrainOptions().with_changes({"forward": "batch"}, "run")
