"""The plug-in wings shipped with netvlad-port: ``gcl`` (the Generalized Contrastive Loss) and ``stml``
(the sharpened triplet loss with semantic de-attention). The core never imports them: they register
through the ``netvlad_port.plugins`` entry-point group (``setup.py``), as a third party's plug-in would
(docs/extending.md#plug-ins)."""
