"""`extract` under torchrun (netvlad_port/distributed_extract.py): two gloo processes on the CPU write the
single-process output byte for byte; a rank that dies leaves its part, and a rerun with the same or another
number of processes finishes the job."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from netvlad_port.cli import main
from netvlad_port.distributed_extract import TEST_EXIT, TEST_EXIT_STATUS, parts_dir
from netvlad_port.matconvnet import write_net

REPO = Path(__file__).resolve().parents[1]
SIZES = [(40, 56), (56, 40), (48, 64)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """60 JPEGs of three sizes (six batches of 10) and a tiny NetVLAD network (VGG16 at 1/16 width, K=8, PCA 32)."""
    from netvlad_port.fixtures import make_net

    tmp = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = SIZES[i % 3]
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = tmp / "images" / f"{'db' if i % 2 else 'q'}/{i:04d}.jpg"
        name.parent.mkdir(parents=True, exist_ok=True)
        (Image.fromarray(arr[:, :, 0]) if i % 13 == 0 else Image.fromarray(arr)).save(name, quality=90)
    write_net(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=8, pca_dim=32, seed=2), tmp / "net.mat")
    return tmp


def extract(data, out, processes=None, env=None, check=True, *args):
    """``netvlad-port extract`` in a fresh process: through torchrun with ``processes`` ranks (gloo), or plain.
    One thread per process (torchrun's default): CPU kernels' sums depend on the thread count, not on the split."""
    cli = ["-m", "netvlad_port.cli", "extract", str(data / "net.mat"), "--images", str(data / "images"),
           "-o", str(out), "--workers", "0", "--quiet", *args]  # fmt: skip
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes else []
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
    res = subprocess.run([sys.executable, *launch, *cli], capture_output=True, text=True, env=full_env, timeout=600)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Traceback" not in res.stderr, res.stderr
    return res


def h5_bytes(path):
    """Every dataset of an h5 (bytes and dtype) and the file's attributes."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = (obj.dtype.str, obj.shape, obj[()].tobytes())

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        return out, dict(f.attrs)


def same_output(a: Path, b: Path) -> None:
    if a.suffix == ".h5":
        assert h5_bytes(a) == h5_bytes(b)
        return
    for suffix in ("", ".names.txt", ".json"):
        assert Path(f"{a}{suffix}").read_bytes() == Path(f"{b}{suffix}").read_bytes(), suffix


@pytest.fixture(scope="module")
def single(data):
    """The single-process outputs, h5 and npy."""
    outs = {fmt: data / f"single.{fmt}" for fmt in ("h5", "npy")}
    for out in outs.values():
        extract(data, out)
    return outs


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_two_processes_write_the_single_process_output(data, single, fmt):
    out = data / f"two.{fmt}"
    res = extract(data, out, processes=2)
    assert f"{out}: 60 images" in res.stdout and "x 2 processes" in res.stdout
    assert res.stdout.count("images in") == 1  # rank 0 speaks for both
    same_output(single[fmt], out)
    assert not parts_dir(out).exists()  # merged, then removed


def parts_after_a_crash(data, out):
    """A 2-rank run whose rank 1 dies after its first batch: no output, both parts kept."""
    res = extract(data, out, processes=2, env={TEST_EXIT: "1:10"}, check=False)
    assert res.returncode != 0 and f"exitcode  : {TEST_EXIT_STATUS}" in res.stderr
    assert not out.exists()
    held = {}
    for part in parts_dir(out).iterdir():
        with h5py.File(part, "r") as f:
            held[part.name] = sum(1 for k in f for _ in f[k])
    assert set(held) <= {"rank0of2.h5", "rank1of2.h5"} and held["rank1of2.h5"] == 10 and sum(held.values()) < 60
    return sum(held.values())


def test_a_rank_that_dies_leaves_its_part_and_a_rerun_finishes(data, single):
    out = data / "crash.h5"
    held = parts_after_a_crash(data, out)
    res = extract(data, out, processes=2)
    assert f"{60 - held} images" in res.stdout and f"{held} already present" in res.stdout
    same_output(single["h5"], out)
    assert not parts_dir(out).exists()


def test_one_process_finishes_what_two_began(data, single):
    out = data / "crash.npy"
    held = parts_after_a_crash(data, out)
    res = extract(data, out)  # no torchrun: the parts are read all the same, the rest done in one process
    assert f"{60 - held} images" in res.stdout and f"{held} already present" in res.stdout
    same_output(single["npy"], out)
    assert not parts_dir(out).exists()


def test_a_part_with_another_tag_is_refused_naming_it(data, tmp_path):
    out = tmp_path / "o.h5"
    parts_dir(out).mkdir()
    with h5py.File(parts_dir(out) / "rank0of3.h5", "w") as f:
        f.attrs["netvlad_port"] = '{"model_sha256": "0123456789abcdef"}'
    args = ["extract", str(data / "net.mat"), "--images", str(data / "images"), "-o", str(out), "--workers", "0",
            "--quiet"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "rank0of3.h5: holds features of another model" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, [*args, "--force"])  # --force replaces it, as it does an output
    assert res.exit_code == 0, res.output
    assert not parts_dir(out).exists() and out.exists()


def test_an_unreadable_part_is_described_again(data, single, tmp_path):
    out = tmp_path / "o.h5"
    parts_dir(out).mkdir()
    (parts_dir(out) / "rank1of2.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # a rank killed mid-write
    res = CliRunner().invoke(main, ["extract", str(data / "net.mat"), "--images", str(data / "images"), "-o",
                                    str(out), "--workers", "0", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "rank1of2.h5: unreadable" in res.output and "60 images" in res.output
    assert sorted(h5_bytes(out)[0]) == sorted(h5_bytes(single["h5"])[0])


def test_sigterm_waits_for_the_batch_being_written():
    from netvlad_port.distributed_extract import Termination

    written, before = [], signal.getsignal(signal.SIGTERM)
    with Termination(rank=0) as term:
        with pytest.raises(KeyboardInterrupt), term.guard():
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun stopping this rank in the middle of a batch
            written.append("the whole batch")
        assert written == ["the whole batch"]
        with pytest.raises(KeyboardInterrupt):  # between batches: at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_each_local_rank_takes_its_own_gpu(monkeypatch):
    import torch

    from netvlad_port.distributed import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device("auto") == "auto"  # no torchrun: as given
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    for rank, gpu in ((0, "cuda:0"), (1, "cuda:1"), (2, "cuda:0")):  # more processes than GPUs: they share
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert local_device("auto") == local_device("cuda") == gpu
    assert local_device("cpu") == "cpu" and local_device("cuda:1") == "cuda:1"


def test_training_ranks_take_their_own_gpu(monkeypatch):
    """``train`` resolves --device through rank_device, and joining an nccl group makes that GPU current
    (nccl's barrier runs there): without it every rank of a node trained on cuda:0."""
    import torch
    import torch.distributed as dist

    from netvlad_port.distributed import init_distributed, rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device(None) == rank_device("cuda") == "cuda:1"
    assert rank_device("cpu") == "cpu"
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    init_distributed(rank_device("auto"))
    assert calls == [("set_device", 1), ("init", "nccl")]


def group_header_versions(path: Path) -> set[int]:
    """Object header versions of every group: 1 is HDF5's old group (names in one local heap, which past
    the metadata cache's 32 MiB is rewritten on every insertion), 2 the 1.8 group (names in a B-tree)."""
    versions = set()
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: versions.add(h5py.h5o.get_info(o.id).hdr.version) if isinstance(o, h5py.Group) else 0)
    return versions


def test_h5_outputs_keep_names_in_btree_groups(data, single):
    """At SF-XL's scale (2.8M names of ~110 bytes) an old-style group stops writing after ~260,000 images."""
    out = data / "groups.h5"
    extract(data, out, processes=2)
    assert group_header_versions(single["h5"]) == group_header_versions(out) == {2}
