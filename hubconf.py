"""torch.hub entry points: ``torch.hub.load("<owner>/netvlad-port", "netvlad_pitts30k", pretrained=True)``.

Each returns a ``netvlad_port.SimpleNN`` in eval mode: N x 3 x H x W RGB in 0..255 -> N x D descriptors.
``pretrained=True`` fetches the released MATLAB network by name (``netvlad-port fetch --list``), downloads
and converts it once into ``$NETVLAD_PORT_HOME``; ``pretrained=False`` gives the same layers with random
weights.
"""

dependencies = ["torch", "numpy", "scipy", "h5py", "safetensors", "pooch"]


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
