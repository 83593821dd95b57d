"""Defaults of the command line's flags, in a module that imports no torch.

:mod:`ppl_cvae.cli.parser` builds the help texts from them without loading the commands
(``ppl-cvae --help`` answers in a fraction of a second); :mod:`ppl_cvae.cli.fit` and
:mod:`ppl_cvae.cli.sample` re-export them.
"""

from __future__ import annotations

DEFAULT_CHUNK_MB = 16.0
"""``fit --chunk-mb`` when not given: MiB per chunk of a lazily read file."""

DEFAULT_BUFFER_CHUNKS = 4
"""``fit --buffer-chunks`` when not given: chunks shuffled together."""

DEFAULT_POTENTIAL_DTYPE = "float32"
"""Default of ``sample --method nuts --potential-dtype`` (docs/measurements.md, "NUTS within 60 s
per observation")."""

NUTS_WARMUP_STEP_SIZE_ONLY = 150
"""Default warm-up of ``sample --method nuts`` (step size only; docs/measurements.md, "Correction
with the physics": the amortized covariance is the mass matrix, Pyro's windowed mass adaptation
needs about 500 iterations)."""

DEFAULT_CHAINS = 4
"""``sample --chains`` when not given (``--method nuts``, ``latent-nuts`` and ``facies-mcmc``)."""

FACIES_MCMC_WARMUP = 300
"""Default warm-up of ``sample --method facies-mcmc``: the default of
:func:`inference.facies_mcmc.sample_facies_mcmc`."""

DEFAULT_FACIES_MOVES = 16
"""``sample --facies-moves`` when not given: the default ``flips_per_step`` of
:func:`inference.facies_mcmc.sample_facies_mcmc`."""

DEFAULT_TEMPERATURES = 8
"""``sample --temperatures`` when not given: the default ``temperatures`` of
:func:`inference.facies_mcmc.sample_facies_mcmc`."""

DEFAULT_SMC_POPULATIONS = 2
"""``sample --chains`` when not given with ``--method facies-smc`` (independent populations):
the default ``populations`` of :func:`inference.facies_smc.sample_facies_smc`."""

DEFAULT_SMC_STEPS = 8
"""``sample --smc-steps`` when not given: the default ``steps_per_stage`` of
:func:`inference.facies_smc.sample_facies_smc`."""

DEFAULT_SMC_FINAL_STEPS = 40
"""``sample --smc-final-steps`` when not given: the default ``final_steps`` of
:func:`inference.facies_smc.sample_facies_smc`."""
