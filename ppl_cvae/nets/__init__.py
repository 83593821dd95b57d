"""The ``torch.nn`` networks of the CVAE.

The three networks of Sohn et al. (2015): :class:`RecognitionNet` ``q(z | x, y)``,
:class:`PriorNet` ``p(z | y)`` and :class:`Decoder` ``p(x | z, y)``, built by
:func:`build_networks` from a registry of network families (:func:`register_network`), and
the blocks they are made of (feature encoders, decoder bodies, Gaussian heads, and the
conditional normalising flow :class:`ConditionalFlow` of ``prior="flow"`` and
``likelihood="flow"``). Networks return distribution parameters, or for a flow a Pyro
distribution; they never sample by themselves: the model's sample sites do.
"""

from ppl_cvae.nets.blocks import (
    ACTIVATIONS,
    ConditionalInput,
    Conv1dDecoder,
    Conv1dEncoder,
    Conv2dDecoder,
    Conv2dEncoder,
    FlattenMLP,
    GaussianHead,
    make_activation,
    mlp,
)
from ppl_cvae.nets.decoder import Decoder
from ppl_cvae.nets.factory import (
    CVAENetworks,
    NetworkFamily,
    build_networks,
    network_names,
    register_network,
)
from ppl_cvae.nets.flows import ConditionalFlow
from ppl_cvae.nets.prior import PriorNet
from ppl_cvae.nets.recognition import RecognitionNet

__all__ = [
    "ACTIVATIONS",
    "CVAENetworks",
    "ConditionalFlow",
    "ConditionalInput",
    "Conv1dDecoder",
    "Conv1dEncoder",
    "Conv2dDecoder",
    "Conv2dEncoder",
    "Decoder",
    "FlattenMLP",
    "GaussianHead",
    "NetworkFamily",
    "PriorNet",
    "RecognitionNet",
    "build_networks",
    "make_activation",
    "mlp",
    "network_names",
    "register_network",
]
