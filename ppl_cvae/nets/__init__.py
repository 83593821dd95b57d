"""Plain ``torch.nn`` building blocks of the CVAE (no Pyro).

Feature encoders, decoders and Gaussian heads. Networks return distribution parameters; they
never sample.
"""

from ppl_cvae.nets.blocks import (
    ACTIVATIONS,
    Conv1dDecoder,
    Conv1dEncoder,
    Conv2dDecoder,
    Conv2dEncoder,
    FlattenMLP,
    GaussianHead,
    make_activation,
    mlp,
)

__all__ = [
    "ACTIVATIONS",
    "Conv1dDecoder",
    "Conv1dEncoder",
    "Conv2dDecoder",
    "Conv2dEncoder",
    "FlattenMLP",
    "GaussianHead",
    "make_activation",
    "mlp",
]
