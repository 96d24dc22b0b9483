"""Training recipes: named, documented sets of training options, defined once (as hloc keeps its
``confs``). ``TrainOptions.from_recipe``, ``train(recipe=...)``, ``netvlad-port train --recipe`` and the
demo read them; options given beside a recipe override it. Plug-ins register theirs (GCL's, STML's).

A dataset family names its default recipe (``DatasetFamily.recipe``); a run without a recipe and without
a family (dbStruct spec files) uses ``deepibl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import Registry

DEFAULT = "deepibl"


@dataclass(frozen=True)
class Recipe:
    name: str
    options: dict = field(default_factory=dict)
    about: str = ""  # what it reproduces, and where its numbers come from


RECIPES: Registry[Recipe] = Registry("recipe", builtins="netvlad_port.train.recipes", key=str.lower)


def register_recipe(name: str, options: dict, about: str = "", base: str | None = None, replace: bool = False):
    """Register a recipe; ``base`` names one whose options it starts from."""
    merged = {**(RECIPES[base].options if base else {}), **options}
    return RECIPES.register(name, Recipe(name, merged, about), replace=replace)


def recipe_options(name: str | None) -> dict:
    """The options of recipe ``name`` (``deepibl`` when None), as a new dict."""
    return dict(RECIPES[name or DEFAULT].options)


# deepIBL's README scripts train SARE from conv5_1 up; the lr is the dataset's (netvlad demo.m, deepIBL README,
# docs/matlab.md#training-options); every other option is the MATLAB functions' default.
register_recipe("deepibl", {"loss": "sare-ind", "back_prop_to_layer": "conv5_1"},
                "deepIBL's train*.m as its README runs them: SARE Gauss-Ind, conv5_1 up, lr 0.0001")  # fmt: skip
register_recipe("deepibl-pitts30k", {"learning_rate": 1e-3}, "deepibl on Pitts30k: lr 0.001", base="deepibl")
register_recipe("deepibl-pitts250k", {"learning_rate": 1e-4}, "deepibl on Pitts250k: lr 0.0001", base="deepibl")
register_recipe("deepibl-tokyotm", {"learning_rate": 1e-4}, "deepibl on TokyoTM: lr 0.0001", base="deepibl")
register_recipe("netvlad-pitts30k", {"loss": "triplet", "learning_rate": 1e-3, "back_prop_to_layer": "conv5_1"},
                "NetVLAD's trainWeakly on Pitts30k (demo.m): triplet, conv5_1 up, lr 0.001")  # fmt: skip
register_recipe("netvlad-pitts250k", {"learning_rate": 1e-4}, "trainWeakly on Pitts250k: lr 0.0001",
                base="netvlad-pitts30k")  # fmt: skip
register_recipe("netvlad-tokyotm", {"learning_rate": 1e-4}, "trainWeakly on TokyoTM: lr 0.0001",
                base="netvlad-pitts30k")  # fmt: skip
register_recipe("demo", {"learning_rate": 1e-3, "n_neg_choice": 200, "pca_dim": 64}, "netvlad-port demo's SARE run "
                "on the synthetic streets: lr 0.001, nNegChoice 200, addPCA to 64-D", base="deepibl")  # fmt: skip
