"""The conditional VAE as a Pyro model/guide pair (and the unconditional VAE as its special case).

Generative story (``model``), for each observation ``n`` of a batch::

    z_n ~ p_theta(z | y_n) = Normal(mu_prior(y_n), sigma_prior(y_n))    (prior net; or N(0, I))
    x_n ~ p_theta(x | z_n, y_n)                                         (decoder)

Amortized guide (``guide``), used for training only::

    z_n ~ q_phi(z | x_n, y_n) = Normal(mu_rec(x_n, y_n), sigma_rec(x_n, y_n))   (recognition net)

``Trace_ELBO`` on this pair maximises
``E_q[log p(x|z,y)] - beta * KL(q(z|x,y) || p(z|y))`` (Sohn et al. 2015, eq. 5, with the KL
weight ``beta`` of a warm-up). Posterior samples of ``x`` given a new ``y`` come from running
``model`` forward with ``x=None`` (``pyro.infer.Predictive``): ``z`` from the prior net, ``x`` from
the decoder. All sites are in physical units; standardisation is an internal layer.
"""

from __future__ import annotations

import itertools
import math
import re
import weakref
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions.transforms import AffineTransform, ReshapeTransform, Transform

from ppl_cvae.checks import shape_text
from ppl_cvae.config import ModelConfig
from ppl_cvae.data.box import BoxTransform
from ppl_cvae.data.layout import DataLayout
from ppl_cvae.data.standardise import LinearWhitener, Standardiser
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.nets.factory import build_networks
from ppl_cvae.problems.parameterisation import Parameterisation

__all__ = ["CVAE", "MAX_WHITENING_PAIRS"]

MAX_WHITENING_PAIRS = 20_000
"""Most training pairs :meth:`CVAE.fit_whitener` regresses on (a 20,000 x 4096 float64 design
matrix is 655 MB)."""


class _CoefficientsToX(Transform):
    """Standardised (unconstrained) basis coefficients ``(*batch, basis_dim)`` -> ``x``.

    ``x = B g(coef_mean + coef_std * c)`` with ``g`` the problem's coefficient transform (or
    the identity). ``x`` lies on the ``basis_dim``-dimensional image of the basis, so there is
    no density on all of ``R^prod(x_shape)``: the log-Jacobian is taken as 0, which makes the
    density of ``x`` the density of its standardised coefficients (the reference measure is
    the one on the coefficients). The inverse is the least-squares projection
    (:meth:`CVAE.coefficients_of`), exact on the image.
    """

    bijective = True  # on the image of the basis

    def __init__(self, cvae: CVAE) -> None:
        super().__init__(cache_size=1)
        self.cvae = cvae
        n_event = len(cvae.config.x_shape)
        self.domain = torch.distributions.constraints.independent(
            torch.distributions.constraints.real, 1
        )
        self.codomain = torch.distributions.constraints.independent(
            torch.distributions.constraints.real, n_event
        )

    def _call(self, c: torch.Tensor) -> torch.Tensor:
        cvae = self.cvae
        return cvae.x_from_coefficients(cvae.coef_mean + cvae.coef_std * c)

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        cvae = self.cvae
        return (cvae.coefficients_of(x) - cvae.coef_mean) / cvae.coef_std

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-1])  # x: coefficients (the domain), y: the models

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size((*shape[:-1], *self.cvae.config.x_shape))

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        n_event = len(self.cvae.config.x_shape)
        return torch.Size((*shape[: len(shape) - n_event], self.cvae.config.basis_dim or 0))


_INSTANCE_COUNTER = itertools.count()
_LIVE: weakref.WeakValueDictionary[str, CVAE] = weakref.WeakValueDictionary()
"""The CVAEs of this process by ``pyro_name`` (their param-store prefix), while they live."""
_REGISTERED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
"""Every parameter a CVAE of this process put in Pyro's param store (a dead model's entries
are told from values loaded from a file by this), by ``id``: a set would compare tensors."""


def _drop_leftovers(name: str) -> None:
    """Remove the param-store entries a dead CVAE of this process left under prefix ``name``."""
    store = pyro.get_param_store()
    for key in list(store.keys()):
        prefix, sep, _ = key.partition("$$$")
        if sep and prefix == name and _REGISTERED.get(id(store[key])) is store[key]:
            del store[key]


class _FaciesCategorical(dist.Categorical):
    """``Categorical`` whose draws are float codes (``x`` is float everywhere in the package).

    ``log_prob`` accepts float codes as it is (torch casts them with ``.long()``), and the
    support check ``integer_interval(0, K - 1)`` holds for integral floats.
    """

    def sample(
        self,
        sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size(),  # noqa: B008
    ) -> torch.Tensor:
        """Draw class codes ``0 .. K-1`` as floats in the dtype of the probabilities."""
        return super().sample(sample_shape).to(self.probs.dtype)


class CVAE(nn.Module):
    """Conditional variational autoencoder with a Pyro ``model`` and amortized ``guide``.

    Parameters
    ----------
    config : ModelConfig
        Architecture; ``config.y_shape=None`` gives the unconditional VAE.
    x_standardiser, y_standardiser : Standardiser, optional
        Fitted elementwise standardisers of ``x`` and ``y``; identity when omitted (a checkpoint
        restores them through the state dict).
    basis : Tensor, shape (x_dim, basis_dim), optional
        Required when ``config.basis_dim`` is set: the decoder mean is ``basis @ c`` with
        coefficients ``c`` (physical units) standardised by ``coef_mean``/``coef_std`` fitted by
        least squares on the training ``x`` (see :meth:`fit_basis_coefficients`).
    coefficient_transform : torch.distributions.Transform, optional
        Required when ``config.constrained_coefficients``: bijection from ``R^basis_dim`` onto
        the valid basis coefficients; the standardisation of the decoder output then happens
        in the unconstrained space.
    forward_operator : callable, optional
        Differentiable ``F(x)``: ``(*batch, *x_shape) -> (*batch, *y_shape)``, for the
        physics-consistency term.
    misfit_std : float, default 1.0
        Scale of ``F(x) - y`` in the physics-consistency term, in units of ``y``.

    Attributes
    ----------
    recognition_net : RecognitionNet or None
        ``q_phi(z | x, y)``, used by :meth:`guide` (training only); None for ``latent_dim=0``.
    prior_net : PriorNet or None
        ``p_theta(z | y)`` (a diagonal Gaussian, or a flow for ``prior="flow"``); None for
        ``prior="standard_normal"`` and ``latent_dim=0``.
    decoder : Decoder
        ``p_theta(x | z, y)`` in standardised units; :meth:`decode` maps it to physical units.
    training_x_range : (Tensor, Tensor) or None
        Smallest and largest value of each element of the training ``x`` (float64 CPU
        tensors of ``x_shape``, units of ``x``) for a model fitted on pairs without a problem,
        whose prior is known only through them (:meth:`set_training_x_range`); None
        otherwise. Amortized sampling reports the draws that leave it
        (:func:`inference.training_range.warn_outside_training_range`).
    data_layout : DataLayout or None
        The dims, coordinates and units of ``x`` and ``y`` in the NetCDF file or Zarr store
        the model was fitted on (:func:`ppl_cvae.data.layout.read_layout`,
        :meth:`set_data_layout`); posterior files of draws without a problem use them. None
        otherwise.

    The networks come from :func:`ppl_cvae.nets.build_networks` (the family that
    ``config.network`` names); this class holds the wiring: standardisation, the decoder
    basis, :meth:`model` and :meth:`guide`.

    Raises
    ------
    ConfigError
        If ``basis`` has the wrong shape for ``config.basis_dim``, or a coefficient transform
        is required but missing.

    Notes
    -----
    Likelihoods of ``x`` (elementwise, event shape ``x_shape``):

    - ``gaussian``: ``Normal(m(z, y), s)``, one learned ``s`` per element;
    - ``gaussian_decoder``: ``Normal(m(z, y), s(z, y))``;
    - ``gaussian_fixed``: ``Normal(m(z, y), fixed_scale)``;
    - ``gaussian_lowrank``: ``LowRankMultivariateNormal(m(z, y), W W^T + diag(s^2))``;
    - ``gaussian_full``: ``MultivariateNormal(m(z, y), scale_tril=L)``, a learned Cholesky
      factor ``L`` of any noise covariance;
    - ``bernoulli``: ``Bernoulli(logits=l(z, y))`` (two facies: ``x`` in {0, 1});
    - ``categorical``: ``Categorical(logits=l(z, y))`` over ``K = num_facies`` classes per
      element (``x`` holds the facies codes ``0 .. K-1`` as floats; Laloy et al. 2018 and
      Lopez-Alvis et al. 2021 generate such discrete geology with deep generative models);
    - ``flow``: a conditional normalising flow on the standardised ``x`` whose context is the
      decoder's first layer ``h(z, y)`` (:class:`~ppl_cvae.nets.ConditionalFlow`).

    With ``config.x_whitening="linear"`` the decoder's distribution is that of the whitened
    ``u = L^{-1}(x_std - A y_std - b)`` (:class:`~ppl_cvae.data.standardise.LinearWhitener`,
    fitted by :meth:`fit_whitener`), mapped to ``x``: a Gaussian decoder ``N(m, diag(s^2))``
    of ``u`` is ``N(A y + b + L m, L diag(s^2) L^T)`` in standardised ``x``, a correlated
    noise that can match the posterior covariance of a linear-Gaussian problem; the
    recognition net reads ``u`` too.

    For ``bernoulli`` and ``categorical`` every element is independent given ``(z, y)``; the
    spatial structure of a facies field comes from ``z``. Probabilities are clamped to
    ``[1e-6, 1 - 1e-6]`` (then renormalised for ``categorical``), which bounds the
    log-likelihood of one element below by ``log(1e-6)``.

    The site ``"x_mean"`` (deterministic) records the decoder mean, so posterior draws can use
    either the decoder's noise (site ``"x"``) or its mean: for ``bernoulli`` it is the facies
    probability ``P(x = 1 | z, y)``, for ``categorical`` the mean code ``sum_k k p_k`` (a
    categorical model also records the class probabilities ``p_k`` at site ``"x_probs"``,
    shape ``(batch, *x_shape, K)``). For a flow it records the flow's image of its base mean
    (a representative point, not the mean), and only when ``x`` is sampled (it costs
    ``prod(x_shape)`` network passes per flow layer).

    No latent (``latent_dim=0``, flow decoder only): the model is ``x ~ p_theta(x | y)``, the
    guide has no sample site, and ``Trace_ELBO`` is the negative log-likelihood of the
    training pairs: neural posterior estimation (Papamakarios and Murray 2016), the first
    round of sbi's ``NPE`` (Greenberg et al. 2019). With a latent and a flow decoder the ELBO
    is a lower bound of that log-likelihood; it is tight when the decoder ignores ``z``.

    Physics-consistency term (``physics_weight > 0`` in :meth:`model`): the factor
    ``-w/2 * sum(((F(m(z, y)) - y) / misfit_std)**2)`` is added to the log joint, which adds
    ``w/2 * E_q[chi^2]`` to the loss. It is a regulariser of the decoder (the "y loss" of the
    Two Birds challenge), not part of the generative model: ``Predictive`` ignores it.

    References
    ----------
    Kingma and Welling (2014), Auto-Encoding Variational Bayes, arXiv:1312.6114.
    Sohn, Lee and Yan (2015), Learning Structured Output Representation using Deep Conditional
    Generative Models, NeurIPS.
    Laloy, Herault, Jacques and Linde (2018), Training-image based geostatistical inversion
    using a spatial generative adversarial neural network, Water Resources Research 54, 381,
    doi:10.1002/2017WR022148.
    Lopez-Alvis, Laloy, Nguyen and Hermans (2021), Deep generative models in inversion: the
    impact of the generator's nonlinearity and development of a new approach based on a
    variational autoencoder, Computers & Geosciences 152, 104762.
    Gabbard et al. (2022), Bayesian parameter estimation using conditional variational
    autoencoders for gravitational-wave astronomy, Nature Physics 18, 112 (VItamin).

    Examples
    --------
    >>> cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(16,)))
    >>> y = torch.zeros(5, 2)
    >>> tuple(pyro.poutine.trace(cvae.model).get_trace(y).nodes["x"]["value"].shape)
    (5, 3)
    """

    # buffers registered in __init__ when config.basis_dim is set (declared for the type checker)
    basis: torch.Tensor
    coef_mean: torch.Tensor
    coef_std: torch.Tensor
    x_low: torch.Tensor  # x_transform="support": the box of the support (buffers)
    x_high: torch.Tensor
    x_floor: torch.Tensor  # and the smallest distance from a one-sided end T^-1 maps

    def __init__(
        self,
        config: ModelConfig,
        x_standardiser: Standardiser | None = None,
        y_standardiser: Standardiser | None = None,
        basis: torch.Tensor | None = None,
        coefficient_transform: torch.distributions.Transform | None = None,
        forward_operator: Callable[[torch.Tensor], torch.Tensor] | None = None,
        misfit_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.config = config
        self._param_sites: dict[str, list[tuple[str, nn.Parameter]]] | None = None
        self._take_pyro_name()
        y_shape = config.y_shape  # None for an unconditional VAE (config.conditional False)
        self.x_standardiser = x_standardiser or Standardiser(config.x_shape, "x")
        self.y_standardiser: Standardiser | None = (
            (y_standardiser or Standardiser(y_shape, "y")) if y_shape is not None else None
        )
        self.forward_operator = forward_operator
        if config.constrained_coefficients and coefficient_transform is None:
            raise ConfigError(
                "constrained_coefficients=True needs the problem's coefficient_transform()"
            )
        self.coefficient_transform = coefficient_transform
        self.misfit_std = float(misfit_std)
        self.training_x_range: tuple[torch.Tensor, torch.Tensor] | None = None
        self.data_layout: DataLayout | None = None
        # the three networks of Sohn et al. (2015), built by the family config.network names
        nets = build_networks(config)
        self.recognition_net = nets.recognition  # q(z | x, y)
        self.prior_net = nets.prior  # p(z | y); None for a standard-normal prior
        self.decoder = nets.decoder  # p(x | z, y)
        x_dim = config.x_dim
        # x_whitening="linear": the networks see u = L^-1 (x_std - A y_std - b) (fit_whitener)
        self.whitener: LinearWhitener | None = None
        if config.x_whitening == "linear":
            self.whitener = LinearWhitener(x_dim, math.prod(y_shape) if y_shape else 0)
        if config.basis_dim is not None:
            if basis is None:
                basis = torch.zeros(x_dim, config.basis_dim)
            if tuple(basis.shape) != (x_dim, config.basis_dim):
                raise ConfigError(
                    f"basis must have shape ({x_dim}, {config.basis_dim}), got {tuple(basis.shape)}"
                )
            self.register_buffer("basis", basis.detach().clone().float())
            self.register_buffer("coef_mean", torch.zeros(config.basis_dim))
            self.register_buffer("coef_std", torch.ones(config.basis_dim))
        if config.x_transform == "support":  # the box of the support (set_x_box)
            self.register_buffer("x_low", torch.full(config.x_shape, -math.inf))
            self.register_buffer("x_high", torch.full(config.x_shape, math.inf))
            self.register_buffer("x_floor", torch.full(config.x_shape, 1.0))

    # ------------------------------------------------------------------ helpers
    def _take_pyro_name(self) -> None:
        """Give this CVAE a param-store prefix ``cvae<N>`` no other one of the process has."""
        name = f"cvae{next(_INSTANCE_COUNTER)}"
        while name in _LIVE:  # a name of this form given with set_pyro_name
            name = f"cvae{next(_INSTANCE_COUNTER)}"
        self.pyro_name = name
        self._param_sites = None
        _LIVE[name] = self
        _drop_leftovers(name)

    def set_pyro_name(self, name: str) -> None:
        """Register this CVAE's parameters under the param-store prefix ``name`` from now on.

        The default prefix, ``cvae<N>``, counts the CVAEs built in the process (the package
        builds some of its own, e.g. to load a checkpoint), so it can differ between the
        process that saved a param store or an optimiser state (``pyro.optim`` ``save``) and
        the one that loads it; a name of your own is the same in both, as the ``name`` of
        ``pyro.module(name, module)`` is (Bingham et al. 2019, Pyro, JMLR 20).

        Parameters
        ----------
        name : str
            The prefix: a non-empty string without ``"$$$"`` (Pyro's separator of module and
            parameter names) that no other live CVAE of this process uses.

        Raises
        ------
        ConfigError
            If ``name`` is not such a string, or another live CVAE has it.

        Notes
        -----
        Entries that a CVAE of this process, now dead, left in the param store under
        ``name`` are removed first (a new model would otherwise take its weights); values
        loaded into the store (``pyro.get_param_store().load``, ``set_state``) are taken by
        the networks at their next model or guide call.

        Examples
        --------
        >>> cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8,)))
        >>> cvae.set_pyro_name("velocity_model")
        >>> cvae.pyro_name
        'velocity_model'
        """
        if not isinstance(name, str) or not name or "$$$" in name:
            raise ConfigError(
                f"the param-store name must be a non-empty str without '$$$', got {name!r}"
            )
        other = _LIVE.get(name)
        if other is not None and other is not self:
            raise ConfigError(
                f"another live CVAE of this process registers its parameters as {name!r}; "
                "choose another name (two models under one name would share their tensors)"
            )
        if other is None:
            _drop_leftovers(name)
        _LIVE.pop(self.pyro_name, None)
        self.pyro_name = name
        self._param_sites = None
        _LIVE[name] = self

    def __getstate__(self) -> dict[str, Any]:
        """Return the state to pickle (``torch.save(cvae)``, ``copy.deepcopy``).

        Pyro's param store hangs a ``weakref`` to the unconstrained tensor on every value it
        returns (``value.unconstrained``), which pickle cannot write; here a weight is its own
        unconstrained tensor, so the attribute is dropped from the weights (the store sets it
        again on its next read) together with the cache of param sites.
        """
        for param in self.parameters():
            if isinstance(param.__dict__.get("unconstrained"), weakref.ref):
                del param.__dict__["unconstrained"]
        state = dict(self.__dict__)
        state["_param_sites"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a copy (``copy.deepcopy``, unpickling) under a param-store name of its own.

        A copy that kept the original's ``pyro_name`` would find the original's tensors in
        Pyro's param store: SVI would optimise those while the copy computed with its own.
        """
        super().__setstate__(state)
        self._take_pyro_name()

    def release_param_store(self) -> None:
        """Remove this CVAE's entries, and those of CVAEs no longer alive, from the param store.

        :func:`~ppl_cvae.train.fit.fit` calls it before training, so that the optimiser sees
        this module's own parameters; other entries (a user's own ``pyro.param`` and
        ``pyro.module`` sites, even those named ``cvae...``; other live models; names given
        with :meth:`set_pyro_name`) are kept. Dead models' entries go only under the default
        names ``cvae<N>``.
        """
        store = pyro.get_param_store()
        for name in list(store.keys()):
            prefix, sep, _ = name.partition("$$$")
            mine = prefix == self.pyro_name
            default = re.fullmatch(r"cvae\d+", prefix) is not None  # not a user's "cvae_x"
            if sep and (mine or (default and prefix not in _LIVE)):
                del store[name]

    def _register_params(self, part: str) -> None:
        """Emit one ``pyro.param`` site per parameter of ``part``, as ``pyro.module`` would.

        The Pyro idiom: the model registers the networks of the generative model (prior net
        and decoder, ``part="model"``), the guide those of the recognition net
        (``part="guide"``). SVI collects the param sites of both traces, so the standard
        ``Trace_ELBO`` fit trains all three; a user's own guide (e.g. ``AutoNormal`` on ``z``)
        trains the prior net and decoder with it, and ``Predictive`` or MCMC on the model read
        them as constants. The (name, parameter) lists are cached, so a step does not walk the
        module tree again; ``_apply`` (``.to()``, ``.double()``) clears them.

        Where the param store already holds another tensor under one of these names (a store
        loaded with ``pyro.get_param_store().load``), the module takes its value and the store
        then holds the module's parameter, as ``pyro.module(..., update_module_params=True)``
        does, so SVI always optimises the tensors the networks compute with.

        Raises
        ------
        ConfigError
            If such a stored tensor has another shape or dtype (another model's parameters
            under this model's name).
        """
        if self._param_sites is None:
            self._param_sites = {"model": [], "guide": []}
            for name, param in self.named_parameters():
                side = "guide" if name.startswith("recognition_net.") else "model"
                self._param_sites[side].append((f"{self.pyro_name}$$${name}", param))
        store = pyro.get_param_store()
        for name, param in self._param_sites[part]:
            if name in store:
                held = store[name]
                if held is not param:
                    self._adopt_stored(name, param, held)
            pyro.param(name, param)
            _REGISTERED[id(param)] = param

    @staticmethod
    def _adopt_stored(name: str, param: nn.Parameter, held: torch.Tensor) -> None:
        """Copy ``held`` (the store's tensor of ``name``) into ``param``; store ``param``."""
        if held.shape != param.shape or held.dtype != param.dtype:
            raise ConfigError(
                f"Pyro's param store holds {name!r} with shape {tuple(held.shape)} and dtype "
                f"{held.dtype}, but this model's parameter has shape {tuple(param.shape)} and "
                f"dtype {param.dtype}: the store holds another model's parameters under this "
                "model's name; call pyro.clear_param_store() first"
            )
        with torch.no_grad():
            param.copy_(held.detach().to(param.device))
        store = pyro.get_param_store()
        del store[name]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> CVAE:
        self._param_sites = None
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load weights as ``nn.Module.load_state_dict`` does; forget the cached param sites.

        With ``assign=True`` the parameters are new tensors: the next model or guide call
        registers those (SVI would otherwise optimise the replaced ones).
        """
        self._param_sites = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def fit_basis_coefficients(self, x: torch.Tensor) -> None:
        """Set ``coef_mean``/``coef_std`` from the least-squares coefficients of training ``x``.

        Parameters
        ----------
        x : Tensor, shape (num, *x_shape)
            Training models in physical units.
        """
        if self.config.basis_dim is None:
            return
        coef = self.coefficients_of(x)
        self.coef_mean.copy_(coef.mean(0))
        self.coef_std.copy_(coef.std(0).clamp_min(1e-6))

    @torch.no_grad()
    def fit_whitener(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Fit the linear whitening of ``x`` given ``y`` (``x_whitening="linear"``) on pairs.

        Call it after the standardisers are fitted; a no-op for ``x_whitening="none"``. At
        most :data:`MAX_WHITENING_PAIRS` pairs are used (a fixed random subset of larger sets:
        the regression's error then adds about ``sqrt((m + 1) / 20000)`` posterior sd to the
        starting point, which training corrects). See
        :class:`~ppl_cvae.data.standardise.LinearWhitener`.

        Parameters
        ----------
        x : Tensor, shape (num, *x_shape)
            Training models in physical units.
        y : Tensor, shape (num, *y_shape), or None for an unconditional VAE
            Training data in physical units.
        """
        if self.whitener is None:
            return
        if x.shape[0] > MAX_WHITENING_PAIRS:  # a fixed random subset bounds the memory
            keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
            keep = keep[:MAX_WHITENING_PAIRS]
            x, y = x[keep], (None if y is None else y[keep])
        y_std = self._standardise_y(y)
        x_std = self.x_standardiser(self.to_unconstrained(x))
        self.whitener.fit(x_std.reshape(x.shape[0], -1), _flat_y(y_std))

    @torch.no_grad()
    def set_training_x_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Record the range of the training ``x``: ``low <= x <= high`` elementwise.

        Kept as float64 CPU tensors in :attr:`training_x_range` (not moved by ``.to()``) and
        saved in the checkpoint (:func:`~ppl_cvae.train.save_checkpoint`).

        Parameters
        ----------
        low, high : Tensor, shape x_shape
            Elementwise minimum and maximum of the training ``x``, units of ``x``.

        Raises
        ------
        ShapeError
            If ``low`` or ``high`` does not have shape ``x_shape``.
        DataError
            If an end is not finite or ``low <= high`` fails for an element.
        """
        for name, value in (("low", low), ("high", high)):
            if tuple(value.shape) != self.config.x_shape:
                raise ShapeError(
                    f"training x range {name} has shape {tuple(value.shape)}; expected x_shape "
                    f"{self.config.x_shape}"
                )
        low64, high64 = (v.detach().to("cpu", torch.float64).clone() for v in (low, high))
        if not bool((torch.isfinite(low64) & torch.isfinite(high64)).all()):
            raise DataError("the training x range must be finite")
        if not bool((low64 <= high64).all()):
            raise DataError("the training x range needs low <= high in every element")
        self.training_x_range = (low64, high64)

    def set_data_layout(self, layout: DataLayout | None) -> None:
        """Record the dims, coordinates and units of the training data's ``x`` and ``y``.

        Kept in :attr:`data_layout` and saved in the checkpoint; posterior files of draws
        made without a problem name their dims and units by it.

        Parameters
        ----------
        layout : DataLayout or None
            As :func:`ppl_cvae.data.layout.read_layout` returns; None forgets it.

        Raises
        ------
        ShapeError
            If its dims or coordinates do not fit ``x_shape`` and ``y_shape``.
        ConfigError
            If ``layout`` is not a DataLayout.
        """
        if layout is not None:
            if not isinstance(layout, DataLayout):
                raise ConfigError(
                    f"layout must be a ppl_cvae.data.layout.DataLayout, got "
                    f"{type(layout).__name__}"
                )
            layout.check_shapes(self.config.x_shape, self.config.y_shape)
        self.data_layout = layout

    @torch.no_grad()
    def set_x_box(
        self, low: torch.Tensor, high: torch.Tensor, floor: torch.Tensor | None = None
    ) -> None:
        """Set the box of ``x_transform="support"``: ``low <= x <= high`` elementwise.

        The standardiser of ``x`` must be fitted on ``T^{-1}`` of the training ``x`` for the
        same box (what :meth:`to_unconstrained` gives once the box is set);
        :func:`~ppl_cvae.train.build_cvae` does both.

        Parameters
        ----------
        low, high : Tensor, shape x_shape
            Ends of the box in units of ``x`` (``-inf`` / ``inf`` for no end).
        floor : Tensor, shape x_shape, optional
            Smallest distance from a one-sided end that ``T^{-1}`` maps, units of ``x``
            (:class:`~ppl_cvae.data.box.BoxTransform`); default 1.

        Raises
        ------
        ConfigError
            If the model has no box (``x_transform="none"``), ``low < high`` fails for an
            element, or ``floor`` is not finite and positive.
        ShapeError
            If ``low``, ``high`` or ``floor`` does not have shape ``x_shape``.
        """
        if self.config.x_transform != "support":
            raise ConfigError("set_x_box needs x_transform='support'")
        floor = torch.ones(self.config.x_shape) if floor is None else floor
        for name, value in (("low", low), ("high", high), ("floor", floor)):
            if tuple(value.shape) != self.config.x_shape:
                raise ShapeError(
                    f"box {name} has shape {tuple(value.shape)}; expected x_shape "
                    f"{self.config.x_shape}"
                )
        if not bool((low < high).all()):
            raise ConfigError("the box of x_transform='support' needs low < high in every element")
        if not bool((torch.isfinite(floor) & (floor > 0)).all()):
            raise ConfigError("the floor of x_transform='support' must be finite and positive")
        self.x_low.copy_(low)
        self.x_high.copy_(high)
        self.x_floor.copy_(floor)

    def box_transform(self) -> BoxTransform | None:
        """Return the map ``u -> x`` onto the box of ``x_transform="support"``, or None."""
        if self.config.x_transform != "support":
            return None
        return BoxTransform(self.x_low, self.x_high, len(self.config.x_shape), self.x_floor)

    def to_unconstrained(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``u = T^{-1}(x)`` (:meth:`box_transform`), or ``x`` itself without a box.

        Shapes: ``(*batch, *x_shape) -> (*batch, *x_shape)``, what the standardiser of ``x``
        is fitted on and sees.
        """
        box = self.box_transform()
        return x if box is None else box.inv(x)

    @torch.no_grad()
    def x_location_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return where the training ``x`` lie and how far they spread, in units of ``x``.

        The standardiser's mean and sd of ``x``; for ``x_transform="support"``, whose
        standardiser is fitted on ``u = T^{-1}(x)``, the image ``T(m_u)`` of the mean of ``u``
        (for ``positive``: the geometric mean of ``x``) and the delta-method sd
        ``|T'(m_u)| s_u``. What a reference model (the RMSE of a prior guess) and the unit of
        each element's steps (refinement) are measured with.

        Returns
        -------
        location, scale : Tensor, each shape x_shape
            ``scale > 0`` unless ``T'`` underflows (``m_u`` far beyond a finite end).
        """
        xs = self.x_standardiser
        box = self.box_transform()
        if box is None:
            return xs.mean, xs.std
        return box(xs.mean), box.log_derivative(xs.mean).exp() * xs.std

    def _whiten(self, x: torch.Tensor, y_std: torch.Tensor | None) -> torch.Tensor:
        """Return the standardised ``x`` the networks see: ``u`` when whitening, else ``x_std``."""
        x_std = self.x_standardiser(self.to_unconstrained(x))
        if self.whitener is None:
            return x_std
        n_event = len(self.config.x_shape)
        batch = x_std.shape[: x_std.dim() - n_event]
        return self.whitener(x_std.reshape(*batch, -1), _flat_y(y_std)).reshape(x_std.shape)

    def parameterisation(self) -> Parameterisation | None:
        """Return the basis decoder's parameterisation ``x = B T(theta)``; None without a basis.

        Built on each call from the ``basis`` buffer (its current dtype and device) and the
        coefficient transform; the same mapping a problem's
        :meth:`~ppl_cvae.problems.base.Problem.parameterisation` gives the refinement and
        samplers on ``theta`` (without the problem's prior density).

        Returns
        -------
        Parameterisation or None
        """
        if self.config.basis_dim is None:
            return None
        return Parameterisation(self.basis, self.config.x_shape, self.coefficient_transform)

    def _basis_parameterisation(self) -> Parameterisation:
        par = self.parameterisation()
        if par is None:
            raise ConfigError("this model has no basis decoder (config.basis_dim is None)")
        return par

    def coefficients_of(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (unconstrained, if a transform is set) basis coefficients of ``x``.

        Parameters
        ----------
        x : Tensor, shape (*batch, *x_shape)

        Returns
        -------
        Tensor, shape (*batch, basis_dim)
            Least-squares coefficients, mapped through the inverse coefficient transform
            (:meth:`Parameterisation.from_x
            <ppl_cvae.problems.parameterisation.Parameterisation.from_x>`).

        Raises
        ------
        ConfigError
            If the model has no basis decoder.
        """
        return self._basis_parameterisation().from_x(x)

    def x_from_coefficients(self, coef: torch.Tensor) -> torch.Tensor:
        """Map (unconstrained) coefficients ``(*batch, basis_dim)`` to ``(*batch, *x_shape)``.

        :meth:`Parameterisation.to_x <ppl_cvae.problems.parameterisation.Parameterisation.to_x>`.

        Raises
        ------
        ConfigError
            If the model has no basis decoder.
        """
        return self._basis_parameterisation().to_x(coef)

    def _check(self, name: str, value: torch.Tensor | None, shape: tuple[int, ...] | None) -> None:
        if shape is None:
            if value is not None:
                raise ShapeError(f"this model is an unconditional VAE: {name} must be None")
            return
        if value is None:
            raise ShapeError(f"{name} is required, expected shape {shape_text('batch', shape)}")
        if value.dim() != len(shape) + 1 or tuple(value.shape[1:]) != tuple(shape):
            raise ShapeError(
                f"{name} must have shape {shape_text('batch', shape)}, got {tuple(value.shape)}"
            )

    def _check_program_inputs(self, y: Any, x: Any, kl_weight: float) -> int:
        """Check the arguments of :meth:`model` and :meth:`guide`; return the batch size.

        Besides :meth:`check_inputs`: each given value must be a tensor in the dtype of the
        model's parameters (the networks' matrix products need one dtype) with at least one
        pair, and ``kl_weight`` a number > 0 (it scales a log density).
        """
        try:
            positive = not isinstance(kl_weight, (str, bytes)) and float(kl_weight) > 0
        except (TypeError, ValueError, RuntimeError):  # not a number (or a tensor of several)
            positive = False
        if not positive:
            raise ConfigError(f"kl_weight (the KL weight beta) must be > 0, got {kl_weight!r}")
        dtype = self.x_standardiser.mean.dtype
        for name, value in (("y", y), ("x", x)):
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ShapeError(
                    f"{name} must be a torch.Tensor, got {type(value).__name__} (convert it "
                    f"with torch.as_tensor({name}, dtype={dtype}))"
                )
            if value.dtype != dtype:
                raise ShapeError(
                    f"{name} has dtype {value.dtype} but the model's parameters are {dtype}: "
                    f"cast it with {name}.to({dtype}) (or the model with .to({value.dtype}))"
                )
        batch = self.check_inputs(y, x)
        if batch == 0:
            raise ShapeError("the model and guide need at least one pair; got a batch of 0")
        return batch

    def check_finite(self, **tensors: torch.Tensor | None) -> None:
        """Raise :class:`DataError` naming the first tensor that holds NaN or inf."""
        for name, value in tensors.items():
            if value is not None and not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).sum())
                raise DataError(f"{name} contains {bad} NaN or inf values")

    def check_inputs(self, y: torch.Tensor | None, x: torch.Tensor | None) -> int:
        """Check the shapes of ``y`` and ``x`` against the configuration; return the batch size.

        Only shapes are checked, not values (see :meth:`check_finite`).

        Parameters
        ----------
        y : Tensor, shape (batch, *y_shape), or None
            Observations; required for a conditional model, None for an unconditional VAE.
        x : Tensor, shape (batch, *x_shape), or None
            Models; None when ``x`` is to be generated.

        Returns
        -------
        int
            The batch size: ``len(y)`` when ``y`` is given, else ``len(x)``, else 1.

        Raises
        ------
        ShapeError
            If ``y`` is missing for a conditional model or given to an unconditional one, if
            ``y`` or ``x`` does not have shape ``(batch, *y_shape)`` / ``(batch, *x_shape)``,
            or if their batch sizes differ.

        Examples
        --------
        >>> from ppl_cvae.config import ModelConfig
        >>> cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8,)))
        >>> cvae.check_inputs(torch.zeros(5, 2), torch.zeros(5, 3))
        5
        >>> cvae.check_inputs(torch.zeros(5, 2), None)
        5
        """
        self._check("y", y, self.config.y_shape)
        if x is not None:
            self._check("x", x, self.config.x_shape)
            if y is not None and x.shape[0] != y.shape[0]:
                raise ShapeError(
                    f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}"
                )
        if y is not None:
            return y.shape[0]
        return x.shape[0] if x is not None else 1

    def _standardise_y(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """Return the standardised ``y``, or None for an unconditional VAE (no y branches)."""
        if self.y_standardiser is None:
            return None
        return self.y_standardiser(y)

    def prior_params(self, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of ``p(z | y)``, each ``(batch, latent_dim)``.

        For ``prior="standard_normal"`` this is ``(0, 1)`` with batch size ``len(y)`` (1 for
        an unconditional VAE).

        Raises
        ------
        ConfigError
            For ``prior="flow"``, which is not a location-scale family (use
            :meth:`prior_distribution`).
        """
        y_std = self._standardise_y(y)
        if self.prior_net is None or y_std is None:  # N(0, I); a VAE has no prior net
            n = y.shape[0] if y is not None else 1
            ref = self.x_standardiser.mean
            zeros = ref.new_zeros(n, self.config.latent_dim)
            return zeros, torch.ones_like(zeros)
        return self.prior_net(y_std)

    def prior_distribution(self, y: torch.Tensor | None) -> dist.TorchDistribution:
        """Return ``p(z | y)``: batch shape ``(batch,)``, event shape ``(latent_dim,)``.

        A diagonal Gaussian (:meth:`prior_params`), or the prior net's flow for
        ``prior="flow"``.
        """
        y_std = self._standardise_y(y)
        if self.prior_net is not None and self.prior_net.flow is not None and y_std is not None:
            return self.prior_net.distribution(y_std)
        loc, scale = self.prior_params(y)
        return dist.Normal(loc, scale).to_event(1)

    def recognition_params(
        self, y: torch.Tensor | None, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of ``q(z | x, y)``, each ``(batch, latent_dim)``.

        For ``latent_dim=0`` both are empty, ``(batch, 0)``.
        """
        if self.recognition_net is None:  # no latent
            empty = x.new_zeros(x.shape[0], 0)
            return empty, empty + 1.0
        y_std = self._standardise_y(y)
        return self.recognition_net(self._whiten(x, y_std), y_std)

    def decode(
        self, z: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the decoder's distribution parameters of ``x``.

        Parameters
        ----------
        z : Tensor, shape (*sample, batch, latent_dim)
        y : Tensor, shape (batch, *y_shape) or None

        Returns
        -------
        mean : Tensor, shape (*sample, batch, *x_shape)
            Decoder mean in physical units (for Bernoulli: the probability of ``x = 1``); for
            ``categorical`` the class probabilities, shape ``(*sample, batch, *x_shape, K)``
            (their last axis sums to 1).
        scale : Tensor, shape (*sample, batch, *x_shape) or None
            Standard deviation in physical units (``None`` for Bernoulli and categorical).

        Raises
        ------
        ConfigError
            For ``likelihood="flow"``, which has no (mean, scale): use :meth:`x_distribution`.
        """
        cfg = self.config
        y_std = self._standardise_y(y)
        loc, scale = self.decoder(z, y_std)
        xs = self.x_standardiser
        if self.whitener is not None:  # loc, scale of u: map through x_std = A y + b + L u
            n_event = len(cfg.x_shape)
            batch = loc.shape[: loc.dim() - n_event]
            loc_x = self.whitener.inverse(loc.reshape(*batch, -1), _flat_y(y_std))
            mean = xs.inverse(loc_x.reshape(loc.shape))
            assert scale is not None  # every whitened likelihood has a scale
            flat_scale = scale.reshape(*scale.shape[: scale.dim() - n_event], -1)
            scale_x = self.whitener.marginal_scale(flat_scale).reshape(scale.shape)
            return mean, (scale_x * xs.std).expand(mean.shape)
        if cfg.basis_dim is not None:
            mean = self.x_from_coefficients(self.coef_mean + self.coef_std * loc)
        elif cfg.likelihood == "bernoulli":
            return torch.sigmoid(loc), None
        elif cfg.likelihood == "categorical":
            return torch.softmax(loc, dim=-1), None
        else:
            mean = xs.inverse(loc)
        if scale is None:  # gaussian_fixed: a fixed scale in physical units
            return mean, mean.new_full(mean.shape, cfg.fixed_scale)
        return mean, (scale * xs.std).expand(mean.shape)

    def x_distribution(
        self, z: torch.Tensor, y: torch.Tensor | None, *, location: bool = True
    ) -> tuple[dist.TorchDistribution, torch.Tensor | None]:
        """Return the decoder's ``p(x | z, y)`` in physical units, and its location.

        Parameters
        ----------
        z : Tensor, shape (*sample, batch, latent_dim)
        y : Tensor, shape (batch, *y_shape) or None
        location : bool, default True
            Whether to compute the location (for a flow it costs ``prod(x_shape)`` network
            passes per layer; the other decoders compute it anyway).

        Returns
        -------
        distribution : pyro.distributions.TorchDistribution
            Batch shape ``(*sample, batch)``, event shape ``x_shape``; ``log_prob`` in nats.
        location : Tensor, shape (*sample, batch, *x_shape), or None
            The decoder mean (for Bernoulli the probability; for categorical the class
            probabilities, shape ``(*sample, batch, *x_shape, K)``; for a flow the image of the
            base mean); None when ``location`` is False and the decoder is a flow.
        """
        if self.whitener is not None:
            return self._whitened_x_distribution(z, y, location)
        if self.config.likelihood != "flow":
            mean, scale = self.decode(z, y)
            return self._x_distribution(mean, scale), mean
        y_std = self._standardise_y(y)
        xs = self.x_standardiser
        x_shape = self.config.x_shape
        flow = self.decoder.flow_distribution(z, y_std)
        loc = None
        if self.config.basis_dim is not None:  # a flow on the coefficients
            if location:
                loc = self.x_from_coefficients(
                    self.coef_mean + self.coef_std * self.decoder.flow_location(z, y_std)
                )
            return dist.TransformedDistribution(flow, [_CoefficientsToX(self)]), loc
        to_x: list[Transform] = [
            AffineTransform(xs.mean.reshape(-1), xs.std.reshape(-1), event_dim=1)
        ]
        if len(x_shape) != 1:
            to_x.append(ReshapeTransform(torch.Size((self.config.x_dim,)), torch.Size(x_shape)))
        box = self.box_transform()
        if box is not None:  # x_transform="support": the flow is on u = T^-1(x)
            to_x.append(box)
        if location:
            flat = self.decoder.flow_location(z, y_std)
            loc = xs.inverse(flat.reshape(*flat.shape[:-1], *x_shape))
            loc = loc if box is None else box(loc)
        # a box: log_prob of a value outside is -inf (BoxTransform), not a validation error
        check = False if box is not None else None
        return dist.TransformedDistribution(flow, to_x, validate_args=check), loc

    def _whitened_x_distribution(
        self, z: torch.Tensor, y: torch.Tensor | None, location: bool
    ) -> tuple[dist.TorchDistribution, torch.Tensor | None]:
        """``x_distribution`` for ``x_whitening="linear"``: the decoder's law of ``u``, mapped.

        The decoder's distribution of the whitened ``u`` (flattened, ``d`` values) is pushed
        through ``u -> x_std = A y + b + L u`` and the standardiser's ``x = mean + std * x_std``
        (fixed affine maps for each ``y``: the log density changes by
        ``-log|det L| - sum(log std)``).
        """
        cfg = self.config
        whitener = self.whitener
        assert whitener is not None
        y_std = self._standardise_y(y)
        y_flat = _flat_y(y_std)
        xs = self.x_standardiser
        loc_u: torch.Tensor | None = None
        base: dist.TorchDistribution
        if cfg.likelihood == "flow":
            base = self.decoder.flow_distribution(z, y_std)
            if location:
                loc_u = self.decoder.flow_location(z, y_std)
        else:
            loc, scale = self.decoder(z, y_std)
            n_event = len(cfg.x_shape)
            loc_u = loc.reshape(*loc.shape[: loc.dim() - n_event], -1)
            tril = self.decoder.scale_tril()
            factor = self.decoder.noise_factor()
            if tril is not None:
                base = dist.MultivariateNormal(loc_u, scale_tril=tril)
            elif factor is not None:
                diag = self.decoder.diagonal_scale().reshape(-1).pow(2)
                base = dist.LowRankMultivariateNormal(loc_u, factor, diag)
            else:
                assert scale is not None
                flat_scale = scale.reshape(*scale.shape[: scale.dim() - n_event], -1)
                base = dist.Normal(loc_u, flat_scale).to_event(1)
        x_shape = cfg.x_shape
        to_x: list[Transform] = [
            whitener.transform(y_flat),
            AffineTransform(xs.mean.reshape(-1), xs.std.reshape(-1), event_dim=1),
        ]
        if len(x_shape) != 1:
            to_x.append(ReshapeTransform(torch.Size((cfg.x_dim,)), torch.Size(x_shape)))
        box = self.box_transform()
        if box is not None:  # x_transform="support": u = T^-1(x) was standardised
            to_x.append(box)
        mean = None
        if loc_u is not None:
            x_std = whitener.inverse(loc_u, y_flat)
            mean = xs.inverse(x_std.reshape(*x_std.shape[:-1], *x_shape))
            mean = mean if box is None else box(mean)
        check = False if box is not None else None
        return dist.TransformedDistribution(base, to_x, validate_args=check), mean

    def _x_distribution(
        self, mean: torch.Tensor, scale: torch.Tensor | None
    ) -> dist.TorchDistribution:
        x_shape = self.config.x_shape
        n_event = len(x_shape)
        if scale is None:
            eps = 1e-6
            if self.config.likelihood == "categorical":  # mean: class probabilities (..., K)
                return _FaciesCategorical(probs=mean.clamp(eps, 1 - eps)).to_event(n_event)
            return dist.Bernoulli(probs=mean.clamp(eps, 1 - eps)).to_event(n_event)
        factor = self.noise_factor()
        tril = self.decoder.scale_tril()
        batch = mean.shape[: mean.dim() - n_event]
        flat: dist.TorchDistribution
        if tril is not None:  # L in units of x: row i scaled by the sd of element i
            tril_x = self.x_standardiser.std.reshape(-1, 1) * tril
            flat = dist.MultivariateNormal(mean.reshape(*batch, -1), scale_tril=tril_x)
        elif factor is None:
            return dist.Normal(mean, scale).to_event(n_event)
        else:
            # the diagonal is global (one value per element), so it is passed without the batch
            # axes: torch then forms the (rank x rank) capacitance matrix once, not per draw
            std = self.x_standardiser.std
            diag = (self.decoder.diagonal_scale() * std).reshape(-1).pow(2)
            flat = dist.LowRankMultivariateNormal(mean.reshape(*batch, -1), factor, diag)
        if n_event == 1:
            return flat
        return dist.TransformedDistribution(
            flat, [ReshapeTransform(torch.Size((self.config.x_dim,)), torch.Size(x_shape))]
        )

    def noise_factor(self) -> torch.Tensor | None:
        """Return the low-rank factor of the decoder noise in units of ``x``, or None.

        Returns
        -------
        Tensor, shape (prod(x_shape), noise_rank), or None
            ``W_x = diag(sd_x) W`` for ``likelihood="gaussian_lowrank"`` (the decoder's ``W``
            in physical units: the noise covariance of flattened ``x`` given ``z, y`` is
            ``W_x W_x^T + diag(scale^2)``); None for the other likelihoods. With
            ``x_whitening="linear"`` the factor is ``diag(sd_x) L W`` and the covariance
            ``diag(sd_x) L (W W^T + diag(d^2)) L^T diag(sd_x)``.
        """
        factor = self.decoder.noise_factor()
        if factor is None:
            return None
        if self.whitener is not None:
            factor = self.whitener.scale_tril @ factor
        return self.x_standardiser.std.reshape(-1, 1) * factor

    # ------------------------------------------------------------------ Pyro programs
    def model(
        self,
        y: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
        *,
        kl_weight: float = 1.0,
        physics_weight: float = 0.0,
        gsnn_weight: float = 0.0,
    ) -> torch.Tensor:
        """Run the generative model ``p(z | y) p(x | z, y)`` under one ``pyro.plate("batch")``.

        Parameters
        ----------
        y : Tensor, shape (batch, *y_shape), or None for an unconditional VAE
            Observations (the condition), physical units.
        x : Tensor, shape (batch, *x_shape), optional
            Subsurface models, observed at site ``"x"`` when given; sampled otherwise.
        kl_weight : float, default 1.0
            KL weight ``beta`` > 0 (scales the log density of site ``"z"``; the guide applies
            the same scale, so the ELBO's KL term is multiplied by ``beta``).
        physics_weight : float, default 0.0
            Weight ``w`` of the physics-consistency factor (see class Notes).
        gsnn_weight : float, default 0.0
            Weight ``w_g`` of the GSNN term (Sohn et al. 2015, eq. 7): with ``x`` observed,
            the factor ``w_g * log p(x | z_p, y)`` with ``z_p ~ p(z | y)`` drawn by
            reparameterisation from the prior net, so that the path posterior sampling uses
            (prior net, then decoder) is trained to reconstruct ``x`` too. The loss is then
            ``(1 + w_g)`` times Sohn et al.'s hybrid objective with ``alpha = 1 / (1 + w_g)``.

        Returns
        -------
        Tensor, shape (batch, *x_shape)
            The value of site ``"x"``.

        Raises
        ------
        ShapeError
            If ``y`` or ``x`` is not a tensor in the dtype of the model's parameters, does not
            have the configured event shape, holds no pair, or the batch sizes differ.
        ConfigError
            If ``kl_weight`` is not > 0, ``physics_weight > 0`` but the model has no forward
            operator or its likelihood is ``categorical``, or ``gsnn_weight > 0`` for a model
            without a latent.

        Notes
        -----
        The plate ``"batch"`` is at ``dim=-1`` and spans the pairs given. For the ELBO of
        ``N`` pairs from a minibatch of ``B``, scale both programs: ``poutine.scale(model,
        N / B)`` and ``poutine.scale(guide, N / B)`` (unbiased). An enclosing plate of the
        caller's own at ``dim=-1`` (Pyro's ``subsample_size`` idiom) is refused by Pyro as a
        collision instead of broadcasting into a ``(B, B)`` batch.
        """
        batch = self._check_program_inputs(y, x, kl_weight)
        self._register_params("model")  # prior net and decoder (pyro.module's idiom)
        with pyro.plate("batch", batch, dim=-1):
            if self.config.latent_dim > 0:
                with poutine.scale(scale=kl_weight):
                    z = pyro.sample("z", self.prior_distribution(y))
            else:  # no latent (a flow decoder alone): an empty z keeps one layout of draws
                empty = self.x_standardiser.mean.new_zeros(batch, 0)
                z = pyro.deterministic("z", empty, event_dim=1)
            want_mean = x is None or physics_weight > 0
            x_dist, mean = self.x_distribution(z, y, location=want_mean)
            n_event = len(self.config.x_shape)
            if mean is not None and self.config.likelihood == "categorical":
                pyro.deterministic("x_probs", mean, event_dim=n_event + 1)  # class probabilities
                codes = torch.arange(mean.shape[-1], dtype=mean.dtype, device=mean.device)
                mean = mean @ codes  # the mean code, sum_k k p_k
            if mean is not None:
                pyro.deterministic("x_mean", mean, event_dim=n_event)
            if gsnn_weight > 0 and x is not None:
                if self.config.latent_dim == 0:
                    raise ConfigError("gsnn_weight > 0 needs a latent (latent_dim >= 1)")
                z_prior = self.prior_distribution(y).rsample()
                gsnn_dist, _ = self.x_distribution(z_prior, y, location=False)
                pyro.factor("gsnn", gsnn_weight * gsnn_dist.log_prob(x))
            x = pyro.sample("x", x_dist, obs=x)
            if physics_weight > 0:
                assert mean is not None
                y_shape = self.config.y_shape
                if self.forward_operator is None or y is None or y_shape is None:
                    raise ConfigError(
                        "physics_weight > 0 needs a conditional model with a forward operator"
                    )
                if self.config.likelihood == "categorical":
                    raise ConfigError(
                        "physics_weight > 0 is not defined for likelihood 'categorical' (F of "
                        "the mean code is not the mean of F); use 0, or 'bernoulli' for two facies"
                    )
                resid = (self.forward_operator(mean) - y) / self.misfit_std
                chi2 = resid.pow(2).flatten(start_dim=resid.dim() - len(y_shape)).sum(-1)
                pyro.factor("physics", -0.5 * physics_weight * chi2)
        return x

    def guide(
        self,
        y: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
        *,
        kl_weight: float = 1.0,
        physics_weight: float = 0.0,
        gsnn_weight: float = 0.0,
    ) -> torch.Tensor:
        """Amortized training guide ``q_phi(z | x, y)`` (recognition net).

        Takes the same arguments as :meth:`model`; ``x`` is required, ``physics_weight`` and
        ``gsnn_weight`` are ignored. Returns the sampled ``z``, shape ``(batch, latent_dim)``.

        Raises
        ------
        ShapeError
            If ``x`` is missing, or ``y`` or ``x`` is not a tensor in the model's dtype, holds
            no pair or does not match the configured shapes.
        """
        if x is None and y is not None and self.config.y_shape is None:
            raise ShapeError(
                "this unconditional VAE takes no y: call guide(None, x) or guide(x=x) (the "
                "data went in the y slot)"
            )
        if x is None:
            raise ShapeError(
                "the training guide needs x; draw posterior samples through the model "
                "(inference.sample_posterior) instead"
            )
        batch = self._check_program_inputs(y, x, kl_weight)
        self._register_params("guide")
        if self.recognition_net is None:  # no latent: the guide has no sample site
            return x.new_zeros(batch, 0)
        with pyro.plate("batch", batch, dim=-1):
            loc, scale = self.recognition_params(y, x)
            with poutine.scale(scale=kl_weight):
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @property
    def samples_decoder_noise(self) -> bool:
        """Whether posterior draws include the decoder's noise by default.

        False for a basis decoder with a Gaussian noise: its mean lies in the span of the
        basis by construction (for Two Birds: straight lines), while elementwise Gaussian noise
        would leave it; the noise is then a training device that absorbs the misfit. True
        otherwise (a flow on the basis coefficients stays in the span), in particular for
        ``bernoulli`` and ``categorical``: a facies posterior draw must be a facies field
        (codes), which the decoder's noise provides; the decoder mean (site ``"x_mean"``, the
        facies probability for ``bernoulli``) is not a draw.
        """
        return self.config.basis_dim is None or self.config.likelihood == "flow"

    def num_parameters(self) -> int:
        """Return the number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _flat_y(y_std: torch.Tensor | None) -> torch.Tensor | None:
    """Flatten standardised ``y`` of shape ``(batch, *y_shape)`` to ``(batch, m)``."""
    return None if y_std is None else y_std.reshape(y_std.shape[0], -1)
