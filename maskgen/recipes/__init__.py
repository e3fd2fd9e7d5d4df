"""Recipe registry: `config.recipe` names the object that knows a paper's model, loss and samples.

A recipe is the only place where a model, a masking rule, a loss and a sampler meet; the training
loop in `maskgen/train.py` talks to recipes through the methods of `maskgen.recipes.base.Recipe`.
"""

from maskgen.recipes.base import Recipe, get_recipe, recipe_names, recipes_with, register

# Importing a recipe module registers it.
from maskgen.recipes import mae, maskgit, tokenizer  # noqa: F401,E402
from maskgen.recipes import masked_diffusion  # noqa: F401,E402
from maskgen.recipes import dit, mar  # noqa: F401,E402
from maskgen.recipes import codec  # noqa: F401,E402
from maskgen.recipes import ssast  # noqa: F401,E402
from maskgen.recipes import feature_tokenizer  # noqa: F401,E402
from maskgen.recipes import magnet  # noqa: F401,E402
from maskgen.recipes import maskgct  # noqa: F401,E402

__all__ = ["Recipe", "get_recipe", "recipe_names", "recipes_with", "register"]
