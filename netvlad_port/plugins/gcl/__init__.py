"""The GCL wing: the Generalized Contrastive Loss of Leyva-Vallina, Strisciuglio & Petkov (CVPR 2023),
marialeyvallina/generalized_contrastive_loss ([docs/gcl.md](../../../docs/gcl.md)).

Registered through the ``netvlad_port.plugins`` entry point ``gcl`` (``register``):

- ``loss``: the losses ``gcl`` and ``contrastive`` (``LOSSES``);
- ``labels``: field-of-view overlap and the label kind ``graded`` (``datasets.labels.LABELS``);
- ``msls``: the MSLS reader and the ``make-synthetic`` layout ``msls``; ``msls_eval``, ``msls_seq``: the dataset
  ``msls`` (``DATASETS``; train, val, test) and ``test``'s MSLS views (subtasks, panoramas, sequence tasks);
- ``protocol``: the evaluation protocol ``gcl`` (``retrieval.PROTOCOLS``), mAP@K;
- ``sampler``: GCL's pair sampler, the sampler ``pairs`` (``train.samplers.SAMPLERS``);
- ``recipes``: GCL's training recipe ``gcl`` and the demo's (``--recipe``, ``demo --recipe gcl``);
- ``importer``: GCL's ``.pth`` checkpoints (``importers.IMPORTERS``, ``convert --from gcl``).
"""


def register() -> None:
    """Import the wing's modules; each registers its pieces on import."""
    from . import importer, labels, loss, msls, msls_eval, protocol, recipes, sampler  # noqa: F401
