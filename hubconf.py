"""torch.hub entry points: ``torch.hub.load("<owner>/netvlad-port", "netvlad_pitts30k", pretrained=True)``.

Each returns a ``netvlad_port.SimpleNN`` in eval mode: N x 3 x H x W RGB in 0..255 -> N x D descriptors (the
GCL and STML networks take RGB in 0..1, as their originals do, and record their resize in ``model.resize``).
``pretrained=True`` fetches the released MATLAB network by name (``netvlad-port fetch --list``), downloads
and converts it once into ``$NETVLAD_PORT_HOME``; ``pretrained=False`` gives the same layers with random
weights.
"""

dependencies = ["torch", "torchvision", "numpy", "scipy", "h5py", "safetensors", "pooch"]


def _model(release: str, arch: str, method: str, pca_dim: int | None, pretrained: bool):
    import netvlad_port
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN

    if pretrained:
        return netvlad_port.load(release)
    return SimpleNN(make_net(arch, method, k=64, pca_dim=pca_dim)).eval()


def netvlad_pitts30k(pretrained: bool = True):
    """NetVLAD (Arandjelovic et al.): VGG16 + NetVLAD (K 64) + whitening, trained on Pitts30k, 4096-D."""
    return _model("vd16_pitts30k_conv5_3_vlad_preL2_intra_white", "vd16", "vlad_preL2_intra", 4096, pretrained)


def netvlad_tokyotm(pretrained: bool = True):
    """NetVLAD: VGG16 + NetVLAD (K 64) + whitening, trained on Tokyo Time Machine, 4096-D."""
    return _model("vd16_tokyoTM_conv5_3_vlad_preL2_intra_white", "vd16", "vlad_preL2_intra", 4096, pretrained)


def deepibl_sare_ind(pretrained: bool = True):
    """SARE (Liu, Li & Dai): deepIBL's 'Our-Ind.', VGG16 + NetVLAD + whitening, Pitts30k, 4096-D (the file
    has no direct link: put it in $NETVLAD_PORT_HOME/downloads, the error says how)."""
    return _model("deepibl_sare_ind", "vd16", "vlad_preL2_intra", 4096, pretrained)


def vgg16_offtheshelf_max(pretrained: bool = True):
    """VGG16 ImageNet conv5_3 + max pooling, 512-D (NetVLAD's off-the-shelf baseline)."""
    return _model("vd16_offtheshelf_conv5_3_max", "vd16", "max", None, pretrained)


def _pytorch_born(release: str, pretrained: bool, network):
    """A GCL / STML network: the released checkpoint, or its layers with torchvision's initialisation."""
    import netvlad_port
    from netvlad_port.model import SimpleNN

    return netvlad_port.load(release) if pretrained else SimpleNN(network()).eval()


def _gcl(arch: str):
    from netvlad_port.plugins.gcl.importer import gcl_network, resize_meta

    return gcl_network(arch, resize=resize_meta(None))  # Resize((480, 640)), as GCL's extractor


def gcl_resnext_gem(pretrained: bool = True):
    """GCL (Leyva-Vallina et al.): ResNeXt101-32x8d + GeM + L2 trained on MSLS, 2048-D (MSLS-val R@1 75.5); takes
    RGB 0..1, resized to 480 x 640 (the file has no direct link: the error says where to get it)."""
    return _pytorch_born("gcl_msls_resnext_gem", pretrained, lambda: _gcl("resnext101_32x8d"))


def gcl_resnet50_gem(pretrained: bool = True):
    """GCL: ResNet50 + GeM + L2 trained on MSLS, 2048-D (MSLS-val R@1 66.2); RGB 0..1, resized to 480 x 640."""
    return _pytorch_born("gcl_msls_resnet50_gem", pretrained, lambda: _gcl("resnet50"))


def stml_deattention_stml(pretrained: bool = True):
    """STML (Choi et al.): VGG16 + de-attention + SE + NetVLAD (K 64) trained with sTML on Pitts30k, 32768-D
    (Pitts30k-test R@1 90.3); RGB 0..1, resized to 480 x 640 (bicubic)."""
    import numpy as np

    from netvlad_port.importers import IMAGENET
    from netvlad_port.matconvnet.spec import LayerSpec, NetSpec
    from netvlad_port.plugins.stml.importer import RESIZE

    def network():
        rng = np.random.default_rng(0)
        vlad = [rng.standard_normal((64, 512, 1, 1)).astype(np.float32), rng.random((64, 512), np.float32)]
        layers = [LayerSpec("backbone", "encoder", [], {"arch": "vgg16", "cut": "conv5_3"}),
                  LayerSpec("deattention", "deattention", [], {"version": 1, "padding": "reflect"}),
                  LayerSpec("se", "senet_attention"), LayerSpec("netvlad", "pool", vlad)]  # fmt: skip
        return NetSpec(layers, {"preprocess": dict(IMAGENET), "resize": dict(RESIZE)})

    return _pytorch_born("stml_deattention_stml", pretrained, network)
