"""Built-in inverse problems (forward operator, prior, noise model) and the problem registry.

Every problem subclasses :class:`~ppl_cvae.problems.base.Problem` (defaults of the optional
members, :attr:`~ppl_cvae.problems.base.Problem.noise`, ``log_likelihood``, ``log_prior``);
:class:`~ppl_cvae.problems.noise.GaussianNoise` is the noise model and
:class:`~ppl_cvae.problems.parameterisation.Parameterisation` the basis-plus-bijection
parameterisation of models that the basis decoder, the refinement and samplers share.
"""

from ppl_cvae.problems.adapter import ProblemAdapter, as_problem
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.crosshole import Crosshole
from ppl_cvae.problems.gravity import Gravity
from ppl_cvae.problems.linear_gaussian import LinearGaussian
from ppl_cvae.problems.mt1d import MT1D
from ppl_cvae.problems.noise import GaussianNoise
from ppl_cvae.problems.parameterisation import Parameterisation
from ppl_cvae.problems.registry import REGISTRY, make_problem, register_problem
from ppl_cvae.problems.two_birds import FUNCTION_PAIRS, TrigComponent, TwoBirds

__all__ = [
    "Crosshole",
    "FUNCTION_PAIRS",
    "GaussianNoise",
    "Gravity",
    "LinearGaussian",
    "MT1D",
    "Parameterisation",
    "Problem",
    "ProblemAdapter",
    "REGISTRY",
    "TrigComponent",
    "TwoBirds",
    "as_problem",
    "make_problem",
    "register_problem",
]
