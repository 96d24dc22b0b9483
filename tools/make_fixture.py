#!/usr/bin/env python
"""Write a MatConvNet-format NetVLAD network with random weights (see netvlad_port.fixtures).

Examples:
  python tools/make_fixture.py -o vgg.mat                                  # full VGG16+NetVLAD+WPCA-4096
  python tools/make_fixture.py -o small.mat --width 0.0625 --k 8 --pca-dim 32 --version v7.3
  python tools/make_fixture.py -o rel.mat --encoding saveobj               # classdef objects, as released
"""

import click

from netvlad_port.fixtures import ARCHS, make_net
from netvlad_port.matconvnet import write_net


@click.command()
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
@click.option("--arch", type=click.Choice(ARCHS), default="vd16", show_default=True)
@click.option("--method", default="vlad_preL2_intra", show_default=True)
@click.option("--width", type=float, default=1.0, show_default=True, help="Channel scale (1 = real VGG16).")
@click.option("--k", type=int, default=64, show_default=True, help="VLAD clusters.")
@click.option("--pca-dim", type=int, default=4096, show_default=True, help="0: no WPCA.")
@click.option("--ceil-pool", is_flag=True, help="Pools padded [0 1 0 1] (Caffe ceil mode).")
@click.option("--average-image", type=click.Choice(["pixel", "vgg"]), default="vgg", show_default=True)
@click.option("--version", "mat_version", type=click.Choice(["v7", "v7.3"]), default="v7", show_default=True)
@click.option("--encoding", type=click.Choice(["struct", "classdef", "saveobj"]), default="struct", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def main(out, arch, method, width, k, pca_dim, ceil_pool, average_image, mat_version, encoding, seed):
    spec = make_net(
        arch,
        method,
        width=width,
        k=k,
        pca_dim=pca_dim or None,
        ceil_pool=ceil_pool,
        seed=seed,
        average_image=average_image,
    )
    write_net(spec, out, version=mat_version, encoding=encoding)
    click.echo(f"{out}: {len(spec.layers)} layers, {arch} {method}, {mat_version} {encoding}")


if __name__ == "__main__":
    main()
