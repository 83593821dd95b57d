"""The "Two Birds, One Neural Network" problem, its exact solutions and the challenge's scoring.

Modules
-------
problem
    :class:`TwoBirds` (prior, forward operator, registered as ``"two_birds"``), the named
    function pairs and the line/endpoint conversions.
exact
    Enumeration of every exact solution of a noise-free observation.
scoring
    The challenge's validity criteria and mode coverage of sample-first posterior draws.
mode_weights
    Posterior weights of the exact solutions and the mode coverage of an exact sampler.
mode_distance
    A weighted sample's weight per exact solution and its total variation distance to the
    exact weights.

Every public name of the five modules is re-exported here.
"""

from ppl_cvae.problems.two_birds.exact import (
    enumerate_exact_solutions,
    enumerate_exact_solutions_batch,
)
from ppl_cvae.problems.two_birds.mode_distance import (
    ModeWeightDistance,
    empirical_mode_weights,
    mode_weight_distance,
)
from ppl_cvae.problems.two_birds.mode_weights import (
    ExactSamplerCoverage,
    exact_mode_weights,
    expected_mode_coverage,
)
from ppl_cvae.problems.two_birds.problem import (
    FUNCTION_PAIRS,
    NUM_POINTS,
    EndpointTransform,
    FunctionPair,
    TrigComponent,
    TwoBirds,
    endpoints_from_lines,
    lines_from_endpoints,
    positions,
)
from ppl_cvae.problems.two_birds.scoring import TwoBirdsScore, score_samples

__all__ = [
    "EndpointTransform",
    "ExactSamplerCoverage",
    "FUNCTION_PAIRS",
    "FunctionPair",
    "ModeWeightDistance",
    "NUM_POINTS",
    "TrigComponent",
    "TwoBirds",
    "TwoBirdsScore",
    "empirical_mode_weights",
    "endpoints_from_lines",
    "enumerate_exact_solutions",
    "enumerate_exact_solutions_batch",
    "exact_mode_weights",
    "expected_mode_coverage",
    "lines_from_endpoints",
    "mode_weight_distance",
    "positions",
    "score_samples",
]
