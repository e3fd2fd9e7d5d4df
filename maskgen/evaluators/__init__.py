"""Evaluators declared in `config.evals` and run every N steps or alone via `maskgen eval`.

Each evaluator is built from its config dict (`type` picks the class; other keys are its
arguments) and receives an `EvalContext`, which hides the recipe, the mesh and the data behind
a few functions.
"""

from maskgen.evaluators.base import EvalContext, EvalResult, build_evaluator, evaluator_types
from maskgen.evaluators import generation, image_grid, linear_probe, reconstruction  # noqa: F401  (registers the types)
from maskgen.evaluators import text  # noqa: F401,E402
from maskgen.evaluators import audio  # noqa: F401,E402
from maskgen.evaluators import classification  # noqa: F401,E402
from maskgen.evaluators import finetune  # noqa: F401,E402

__all__ = ["EvalContext", "EvalResult", "build_evaluator", "evaluator_types"]
