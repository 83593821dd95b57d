"""Built-in inverse problems (forward operator, prior, noise model) and the problem registry."""

from ppl_cvae.problems.base import REGISTRY, Problem, make_problem, register_problem
from ppl_cvae.problems.crosshole import Crosshole
from ppl_cvae.problems.gravity import Gravity
from ppl_cvae.problems.linear_gaussian import LinearGaussian
from ppl_cvae.problems.mt1d import MT1D
from ppl_cvae.problems.two_birds import FUNCTION_PAIRS, TrigComponent, TwoBirds

__all__ = [
    "Crosshole",
    "FUNCTION_PAIRS",
    "Gravity",
    "LinearGaussian",
    "MT1D",
    "Problem",
    "REGISTRY",
    "TrigComponent",
    "TwoBirds",
    "make_problem",
    "register_problem",
]
