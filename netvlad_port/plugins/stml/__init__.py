"""The sTML wing: the sharpened triplet loss and semantic de-attention of Choi et al. (Pattern Recognition
141, 2023), deepguider/deattention_with_stml_for_vpr ([docs/stml.md](../../../docs/stml.md)).

Registered through the ``netvlad_port.plugins`` entry point ``stml`` (``register``)."""


def register() -> None:
    """Import the wing's modules; each registers its pieces on import."""
    from ...losses import stml  # noqa: F401  (moves into this wing)
