"""Released networks by name: download once (pooch, resumable, checked), convert once, load
([docs/formats.md#released-models-by-name](../docs/formats.md#released-models-by-name)).

``load_release("vd16_pitts30k_conv5_3_vlad_preL2_intra_white")`` (or ``netvlad_port.load`` of that
name, or ``netvlad-port fetch NAME``) returns the converted folder under ``home()/models/NAME``,
downloading ``home()/downloads/FILE`` first when needed. ``home()`` is ``$NETVLAD_PORT_HOME`` or
the user's cache folder. A sha256 not in the registry is recorded on the first download
(``home()/sha256.json``) and checked from then on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import NetVladPortError
from .registry import Registry

NETVLAD_URL = "https://www.di.ens.fr/willow/research/netvlad/data/models/"  # Relja/netvlad README
HLOC_URL = "https://cvg-data.inf.ethz.ch/hloc/netvlad/"  # hloc/extractors/netvlad.py
ATTEMPTS = 3  # transfers per download before giving up (each resumes where the last stopped)
CHUNK = 1 << 16  # bytes kept per write: an interrupted transfer loses less than this


@dataclass(frozen=True)
class Release:
    """A released network: where to get ``file``, its sha256 and size when known, what it is."""

    name: str
    file: str
    url: str | None  # None: no direct link (fetch it by hand, see ``how``)
    about: str
    sha256: str | None = None
    size: int | None = None
    how: str = ""  # where to get it by hand
    arch: dict | None = None  # what the file must hold: output_dim, method, clusters (checked when sha256 is unknown)
    importer: dict | None = None  # a .pth checkpoint: import_checkpoint's source and options (None: a .mat)


RELEASES: Registry[Release] = Registry("released model", builtins="netvlad_port.hub", key=str.lower)


def register_release(release: Release, replace: bool = False) -> Release:
    return RELEASES.register(release.name, release, replace=replace)


NETVLAD_64 = {"output_dim": 4096, "method": "vlad_preL2_intra", "clusters": 64}  # + whitening (the README's models)
for _name, _about, _arch in (
    ("vd16_pitts30k_conv5_3_vlad_preL2_intra_white", "NetVLAD VGG16 + NetVLAD (K 64) + whitening, Pitts30k, 4096-D",
     NETVLAD_64),
    ("vd16_tokyoTM_conv5_3_vlad_preL2_intra_white", "NetVLAD VGG16 + NetVLAD (K 64) + whitening, TokyoTM, 4096-D",
     NETVLAD_64),
    ("vd16_offtheshelf_conv5_3_max", "VGG16 ImageNet conv5_3 + max pooling, 512-D", {"output_dim": 512}),
    ("caffe_offtheshelf_conv5_max", "CaffeNet ImageNet conv5 + max pooling, 256-D", {"output_dim": 256}),
):  # fmt: skip
    register_release(Release(_name, f"{_name}.mat", NETVLAD_URL + f"{_name}.mat", _about, arch=_arch))
for _name, _file, _about in (
    ("hloc_pitts30k", "Pitts30K_struct.mat", "hloc's struct-ified copy of the Pitts30k NetVLAD model"),
    ("hloc_tokyotm", "TokyoTM_struct.mat", "hloc's struct-ified copy of the TokyoTM NetVLAD model"),
):
    register_release(Release(_name, _file, HLOC_URL + _file, _about, arch=NETVLAD_64))
register_release(
    Release(
        "deepibl_sare_ind",
        "deepIBL_sare_ind.mat",
        None,
        "deepIBL 'Our-Ind.': SARE Gauss-Ind, VGG16 + NetVLAD + whitening, Pitts30k, 4096-D",
        how="from Google Drive, id 1riu7rJEH4Eh5vhQ_tM8dBtUfwhKilqhq, as the Liumouliu/deepIBL README says",
        arch=NETVLAD_64,
    )
)

TORCHVISION_URL = "https://download.pytorch.org/models/"  # torchvision's weights enums, IMAGENET1K_V1
for _name, _file, _arch in (
    ("vgg16", "vgg16-397923af.pth", "vgg16"),
    ("alexnet", "alexnet-owt-7be5be79.pth", "alexnet"),
    ("resnet50", "resnet50-0676ba61.pth", "resnet50"),
    ("resnet152", "resnet152-394f9c45.pth", "resnet152"),
    ("resnext101_32x8d", "resnext101_32x8d-8ba56ff5.pth", "resnext101_32x8d"),
):  # the V1 weights the originals' pretrained=True loads (torchvision's legacy interface)
    register_release(Release(f"{_name}_imagenet", _file, TORCHVISION_URL + _file,
                             f"torchvision {_arch} ImageNet (IMAGENET1K_V1) trunk: a training start",
                             arch={"backbone": _arch}, importer={"source": "torchvision"}))  # fmt: skip
register_release(
    Release(
        "nanne_vgg16_netvlad",
        "nanne_vgg16_netvlad_checkpoint.pth.tar",
        None,
        "Nanne's pytorch-NetVlad: VGG16 + NetVLAD (K 64), Pitts30k, 32768-D (Pitts30k val R@1 85.2)",
        how="from Google Drive, id 17luTjZFCX639guSVy00OUtzfTQo4AMF2 (the Nanne/pytorch-NetVlad README), its "
        "checkpoints/checkpoint.pth.tar saved under this name",
        arch={"output_dim": 32768, "clusters": 64, "backbone": "vgg16"},
        importer={"source": "nanne"},
    )
)


def home() -> Path:
    """``$NETVLAD_PORT_HOME``, else the user's cache folder (``~/.cache/netvlad-port`` on Linux)."""
    if os.environ.get("NETVLAD_PORT_HOME"):
        return Path(os.environ["NETVLAD_PORT_HOME"])
    import pooch

    return Path(pooch.os_cache("netvlad-port"))


def _recorded() -> dict:
    path = home() / "sha256.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        raise NetVladPortError(f"{path}: not JSON; delete it to record the checksums again") from None


def _record(file: str, digest: str) -> None:
    from .io_utils import atomic_file

    recorded = {**_recorded(), file: digest}
    with atomic_file(home() / "sha256.json") as tmp:
        tmp.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def _resuming_downloader(part: Path, progress: bool):
    """A pooch downloader that keeps what arrived in ``part`` (``FILE.part``) and asks for the rest
    with an HTTP Range request, up to ``ATTEMPTS`` transfers per call; a later call resumes too."""

    def download(url: str, output_file: str, pooch_obj=None) -> None:
        import shutil

        import requests
        from tqdm import tqdm

        total, done = None, False
        for _ in range(ATTEMPTS):
            have = part.stat().st_size if part.is_file() else 0
            try:
                with requests.get(url, headers={"Range": f"bytes={have}-"} if have else {}, stream=True,
                                  timeout=30) as r:  # fmt: skip
                    if r.status_code == 416:  # the range starts at the end: nothing left to send
                        done = True
                        break
                    r.raise_for_status()
                    if r.status_code != 206:  # the whole file again
                        have = 0
                    length = r.headers.get("Content-Length")
                    total = have + int(length) if length is not None else None
                    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, disable=not progress)
                    with open(part, "ab" if have else "wb") as f, bar:
                        for chunk in r.iter_content(CHUNK):
                            f.write(chunk)
                            bar.update(len(chunk))
                done = total is None or part.stat().st_size >= total
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as exc:
                if (part.stat().st_size if part.is_file() else 0) == have:  # nothing arrived: offline or refused
                    raise NetVladPortError(f"{url}: cannot download ({type(exc).__name__})") from None
            if done:
                break
        if not done:
            got = part.stat().st_size if part.is_file() else 0
            raise NetVladPortError(f"{url}: the transfer stopped at {got} of {total or '?'} bytes; {part} keeps "
                                   f"them, run again to resume")  # fmt: skip
        shutil.move(part, output_file)

    return download


def fetch_release(name: str, progress: bool = False) -> Path:
    """The downloaded file of release ``name`` (downloaded and checked when needed; :func:`load_release`
    records its sha256 once the file has proved to be the release)."""
    import pooch
    import requests

    release = RELEASES[name]
    folder = home() / "downloads"
    dest = folder / release.file
    known = release.sha256 or _recorded().get(release.file)
    if dest.is_file() and (known is None or pooch.file_hash(str(dest)) == known):
        _check_size(release, dest)
        return dest
    if release.url is None:
        raise NetVladPortError(f"{release.name}: no direct download; get {release.file} by hand, {release.how}, "
                               f"and put it in {folder}")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    try:
        download = _resuming_downloader(folder / f"{release.file}.part", progress)
        path = Path(pooch.retrieve(release.url, known_hash=known and f"sha256:{known}", fname=release.file,
                                   path=folder, downloader=download))  # fmt: skip
    except NetVladPortError as exc:
        raise NetVladPortError(f"{exc}. Offline? Download it by hand and put it at {dest}") from None
    except requests.exceptions.HTTPError as exc:
        raise NetVladPortError(f"{release.url}: {exc}. Download {release.file} by hand and put it at {dest}") from None
    except ValueError as exc:  # pooch: checksum mismatch
        raise NetVladPortError(f"{release.url}: the download is not the released file ({exc}); nothing kept") from None
    _check_size(release, path)
    return path


def _check_size(release: Release, path: Path) -> None:
    if release.size is not None and path.stat().st_size != release.size:
        raise NetVladPortError(f"{path}: {path.stat().st_size} bytes, the release has {release.size}; delete it and "
                               f"fetch again")  # fmt: skip


def load_release(name: str, progress: bool = False) -> Path:
    """The converted folder of release ``name``: fetched and converted on first use, then reused."""
    from .converted import save_converted
    from .importers import import_checkpoint
    from .matconvnet import read_net

    out = home() / "models" / RELEASES[name].name
    if (out / "config.json").is_file():
        return out
    import pooch

    release = RELEASES[name]
    path = fetch_release(name, progress)
    try:
        spec = read_net(path) if release.importer is None else import_checkpoint(path, **release.importer)
    except NetVladPortError as exc:
        raise NetVladPortError(f"{exc} -- the download does not parse; delete {path} and fetch it again") from None
    if not (release.sha256 or _recorded().get(release.file)):  # an unknown checksum: the file must fit the release
        _check_arch(release, spec, path)
        _record(release.file, pooch.file_hash(str(path)))
    save_converted(spec, out, source=path, force=True)
    return out


def _check_arch(release: Release, spec, path: Path) -> None:
    """Refuse a file whose network is not the release's (descriptor dimension, method, clusters)."""
    from .matconvnet.spec import infer_method, output_dim

    if not release.arch:
        return
    vlad = [layer for layer in spec.layers if layer.type in ("layerVLAD", "layerVLADv2")]
    torch_vlad = [layer for layer in spec.layers if layer.type == "netvlad"]
    backbone = [layer.params["arch"] for layer in spec.layers if layer.type == "backbone"]
    have = {"output_dim": output_dim(spec), "method": infer_method(spec), "backbone": backbone[0] if backbone else None,
            "clusters": int(vlad[0].weights[0].shape[-1]) if vlad else
            int(torch_vlad[0].weights[-1].shape[0]) if torch_vlad else None}  # fmt: skip
    diff = [f"{k} {have[k]} (the release: {v})" for k, v in release.arch.items() if have.get(k) != v]
    if diff:
        raise NetVladPortError(f"{path}: not {release.name}: {', '.join(diff)}; delete it and fetch again")
