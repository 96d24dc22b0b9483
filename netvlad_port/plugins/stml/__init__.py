"""The sTML wing: the sharpened triplet loss and semantic de-attention of Choi et al. (Pattern Recognition
141, 2023), deepguider/deattention_with_stml_for_vpr ([docs/stml.md](../../../docs/stml.md)).

``losses`` (stml, triplet-stml, triplet-nanne), ``sampler`` (NAN's mining margin, ``--mining-margin``),
``attention`` (de-attention, CRN, SE, BAM, CBAM as layer types and ``--attention`` names), ``guidance``
(the mask's supervision as a loss term, ``--guidance``), ``recipes`` (STML's), ``importer`` (its ``.pth``
checkpoints). Registered through the ``netvlad_port.plugins`` entry point ``stml`` (``register``).
"""


def register() -> None:
    """Import the wing's modules; each registers its pieces on import."""
    from . import attention, guidance, importer, losses, recipes, sampler  # noqa: F401
