"""Names, limits and defaults that the command line offers, in a module that imports no torch.

The modules that use them (:mod:`ppl_cvae.config`, :mod:`ppl_cvae.nets.decoder`,
:mod:`ppl_cvae.nets.flows`, :mod:`ppl_cvae.device`, :mod:`ppl_cvae.checks` and the
command modules of :mod:`ppl_cvae.cli`) import and re-export them from here, so that
``ppl-cvae --help`` and a mistyped flag are answered by the argument parser
(:mod:`ppl_cvae.cli.parser`) without loading torch and Pyro (about 2 s).
"""

from __future__ import annotations

from typing import Literal, get_args

Likelihood = Literal[
    "gaussian",
    "gaussian_decoder",
    "gaussian_fixed",
    "gaussian_lowrank",
    "gaussian_full",
    "bernoulli",
    "categorical",
    "flow",
]
"""The decoder likelihoods (``ModelConfig.likelihood``)."""

DECODER_LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)

FlowLayerType = Literal["autoregressive", "coupling"]

FLOW_LAYER_TYPES: tuple[FlowLayerType, ...] = ("autoregressive", "coupling")
"""Spline layer types of :class:`~ppl_cvae.nets.flows.ConditionalFlow` (``layer_type``)."""

NETWORKS = ("mlp", "conv1d", "conv2d")  # built in; ppl_cvae.nets.register_network adds more
PRIORS = ("learned", "standard_normal", "flow")
Y_EMBEDDINGS = ("separate", "shared")
X_WHITENINGS = ("none", "linear")
X_TRANSFORMS = ("none", "support")
PRIOR_FLOW_FINALS = ("auto", "spline", "none")  # ModelConfig.prior_flow_final

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
"""What ``--device`` accepts, for help texts and error messages."""

MAX_SEED = 2**32 - 1
"""Largest seed accepted (NumPy's, and so Pyro's ``set_rng_seed``, upper bound)."""

MAX_COUNT = 2**63 - 1
"""Largest count accepted (:func:`~ppl_cvae.checks.as_count`, the command line's counts):
torch's int64 and the 64-bit integer attributes of a posterior file hold no more. A larger
count (``10**30`` warm-up steps or facies moves) could never be carried out, only waited
for."""
