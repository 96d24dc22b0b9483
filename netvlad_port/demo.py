"""``netvlad-port demo``: the whole job on embedded synthetic data, for one training recipe.

``sare-ind``: deepIBL's SARE recipe on the dbStruct layout -- NetVLAD (K 16) clusters, convert,
evaluate MATLAB's way, train SARE Gauss-Ind, addPCA, evaluate again. The plug-in wings register theirs
(``gcl``: GCL's VGG-GeM on the MSLS layout; ``stml``: the triplet baseline against de-attention + sTML).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import NetVladPortError
from .registry import Registry


@dataclass(frozen=True)
class Demo:
    """One ``demo --recipe`` scenario. ``runs``: (table label, run folder, training recipe name, options over
    it; ``"{data}"`` in a string is the dataset folder). ``notes(spec, final, options, db)``: a line to
    print after a run (e.g. the sTML wing's mask IoU)."""

    name: str
    layout: str  # make_synthetic layout
    splits: tuple[str, str, str]  # dataset names: train, val, evaluation
    head: str  # addLayers method
    runs: tuple[tuple[str, str, str, dict], ...] = ()
    epochs: int = 8
    protocol: str = "matlab"
    masks: bool = False  # make-synthetic --masks (the de-attention's guidance)
    about: str = ""
    notes: Callable | None = None
    # the off-the-shelf network, when not MATLAB's (loadNet + addLayers ``head``): () -> (NetSpec, what it is), or
    # (db_train, cache_dir) -> ... when it is clustered on the training data (``network_clusters``)
    network: Callable | None = None
    network_clusters: bool = False


DEMOS: Registry[Demo] = Registry("demo", builtins="netvlad_port.demo", key=str.lower)


def register_demo(demo: Demo, replace: bool = False) -> Demo:
    return DEMOS.register(demo.name, demo, replace=replace)


register_demo(Demo(
    "sare-ind", "dbstruct", ("synthetic-train", "synthetic-val", "synthetic-test"), "vlad_preL2_intra",
    (("trained + WPCA", "trained", "demo", {}),),
    about="SARE Gauss-Ind (recipe demo: lr 0.001, conv5_1 up), best epoch on val, addPCA (whitening to 64-D)",
))  # fmt: skip
TABLE_NS = (1, 2, 3, 4, 5, 10, 20, 50, 100)


def run_demo(out_dir: Path, recipe: str = "sare-ind", epochs: int | None = None, force: bool = False, say=print):
    """Write everything under ``out_dir`` and print the before/after table."""
    from .converted import save_converted
    from .datasets import open_dataset
    from .datasets.synthetic import SyntheticConfig, make_synthetic
    from .evaluate import run_evaluation
    from .fixtures import write_imagenet_model
    from .loading import load
    from .matconvnet import read_net, write_net
    from .networks import add_layers, load_net
    from .plots import plot_recall
    from .retrieval import evaluation_view
    from .train import train as run_training

    r = DEMOS[recipe]
    epochs = r.epochs if epochs is None else epochs
    if out_dir.exists():
        if not force:
            raise NetVladPortError(f"{out_dir}: exists (use --force to start again)")
        shutil.rmtree(out_dir)
    t0 = time.perf_counter()
    data = out_dir / "data"
    say(f"1/6 synthetic streets ({r.layout} layout{', cars and masks' if r.masks else ''}, 300 db + 200 queries a "
        f"split, 120x160) -> {data}")  # fmt: skip
    make_synthetic(data, SyntheticConfig(db_per_split=300, queries_per_split=200, masks=r.masks), layout=r.layout)
    db_train, db_val, db_test = (open_dataset(name, data) for name in r.splits)
    imagenet = out_dir / "imagenet-vgg-verydeep-16.mat"
    net_path = out_dir / f"vd16_offtheshelf_conv5_3_synthetic_{r.head}.mat"
    matlab = "vlad" in r.head and r.network is None  # MATLAB can hold it: saved with layerVLAD as a classdef object
    if r.network is not None:
        spec, what = r.network(db_train, out_dir / "init") if r.network_clusters else r.network()
        say(f"2/6 {what}\n3/6 -> {out_dir / 'offtheshelf'}")
    else:
        say(f"2/6 a MatConvNet ImageNet-format VGG16 (1/8 width, random weights) -> {imagenet}")
        write_imagenet_model(imagenet, "vd16", width=1 / 8, seed=0)
        clusters = "getClusters + " if matlab else ""
        say(f"3/6 loadNet + {clusters}addLayers ({r.head}) -> {net_path if matlab else out_dir / 'offtheshelf'}")
        spec = add_layers(load_net("vd16", "conv5_3", imagenet), r.head, db_train=db_train, k=16,
                          cache_dir=out_dir / "init", progress=False)  # fmt: skip
    if matlab:
        write_net(spec, net_path, encoding="saveobj")
        spec = read_net(net_path)
    save_converted(spec, out_dir / "offtheshelf", source=net_path if matlab else None)

    db_test = evaluation_view(db_test, r.protocol)  # as test --protocol evaluates it (MSLS under gcl: panoramas ranked)

    def evaluate(model, sub):
        return run_evaluation(load(model), db_test, out_dir / sub, None, 10, "auto", None, quiet=True,
                              protocol=r.protocol)  # fmt: skip

    say(f"4/6 extract and evaluate the off-the-shelf network on {db_test.name} (protocol {r.protocol})")
    rows = [("off-the-shelf", evaluate(out_dir / "offtheshelf", "eval_offtheshelf"))]
    notes = []
    if epochs:
        say(f"5/6 train {r.about}, {epochs} epochs")
        for label, folder, name, options in r.runs:
            options = {k: v.format(data=data) if isinstance(v, str) else v for k, v in options.items()}
            final = run_training(db_train, db_val, out_dir / "offtheshelf", out_dir / _run(folder), log=lambda *a: None,
                                 recipe=name, n_epoch=epochs, **options)  # fmt: skip
            rows.append((label, evaluate(final, f"eval_{folder}")))
            if r.notes is not None and (note := r.notes(spec, final, options, db_test)):
                notes.append(note)
        say(f"6/6 evaluated the trained network{'s' if len(r.runs) > 1 else ''} on {db_test.name}")
    before = rows[0][1]
    say(f"\n{db_test.name}: {before.num_queries} queries ({before.search})")
    say("   N  " + "  ".join(f"{name:>15}" for name, _ in rows) + ("  " + "  ".join(
        f"{'mAP ' + name:>20}" for name, _ in rows) if before.maps else ""))  # fmt: skip
    for i, n in enumerate(before.recall_ns):
        if n in TABLE_NS:
            line = f"{n:>4}  " + "  ".join(f"{res.recalls[i] * 100:>14.1f}%" for _, res in rows)
            if before.maps:
                line += "  " + "  ".join(f"{res.maps[i] * 100:>19.1f}%" for _, res in rows)
            say(line)
    for note in notes:
        say(note)
    plot_recall([res for _, res in rows], out_dir / "recall.png", labels=[name for name, _ in rows])
    say(f"\n{time.perf_counter() - t0:.0f} s. Outputs in {out_dir}/:")
    files = ("synthetic_{train,val,test}.mat, images/, queries/" if r.layout == "dbstruct"
             else "train_val/<city>/{database,query}/ with postprocessed.csv, raw.csv, images/")  # fmt: skip
    if r.masks:
        files += ", masks/ (train-ids)"
    outputs = [("data/", f"the synthetic dataset: {files}")]
    if r.network is None:
        outputs.append((imagenet.name, "the MatConvNet ImageNet-format VGG16 (random weights)"))
    if matlab:
        outputs.append((net_path.name, "the off-the-shelf network as MATLAB saves it (layerVLAD a classdef object)"))
    outputs += [
        ("offtheshelf/", "the off-the-shelf network, converted (model.safetensors + config.json)"),
        (
            "eval_offtheshelf/",
            "its db.h5 / q.h5 features, results.json, predictions.csv, pairs.txt, recall.png, mosaic.png",
        ),
    ]
    if epochs:
        for label, folder, _, _ in r.runs:
            outputs += [
                (
                    f"{_run(folder)}/",
                    f"{label}: log.jsonl, summary.json, recall_per_epoch.png, epoch_*/, final/ (best epoch)",
                ),
                (f"eval_{folder}/", "its features, results.json, recall.png, mosaic.png"),
            ]
    outputs.append(("recall.png", "recall@N of " + " and ".join(name for name, _ in rows)))
    width = max(len(name) for name, _ in outputs)
    for name, what in outputs:
        say(f"  {name:<{width}}  {what}")
    return rows


def _run(folder: str) -> str:
    """The training run's folder of a demo row (``train/`` for the single-run recipes)."""
    return "train" if folder == "trained" else f"train_{folder}"
