"""The GCL wing: the Generalized Contrastive Loss of Leyva-Vallina, Strisciuglio & Petkov (CVPR 2023),
marialeyvallina/generalized_contrastive_loss ([docs/gcl.md](../../../docs/gcl.md)).

Registered through the ``netvlad_port.plugins`` entry point ``gcl`` (``register``)."""


def register() -> None:
    """Import the wing's modules; each registers its pieces on import."""
    from ...losses import gcl  # noqa: F401  (moves into this wing)
