"""Label-conditional CVAE and VAE on scikit-learn's handwritten digits (issue 4, first slice)."""

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from inference import draw_posterior
from ppl_cvae import ModelConfig, TrainConfig, build_cvae, fit
from ppl_cvae.data.datasets import load_dataset, one_hot
from ppl_cvae.errors import ConfigError, UnknownProblemError
from ppl_cvae.train import negative_elbo


def _split():
    x, y, info = load_dataset("digits")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, y, info["labels"], perm[:300], perm[300:]


def _independent_pixel_nll(train, test):
    """Test NLL (nats per image) of independent Bernoulli pixels fitted on the training set."""
    p = train.mean(0).clamp(1e-3, 1 - 1e-3)
    return -(test * p.log() + (1 - test) * (1 - p).log()).flatten(1).sum(1).mean().item()


def _fit(x, y):
    cfg = ModelConfig(
        x_shape=(8, 8), y_shape=(10,), latent_dim=8, hidden_dims=(128, 128), likelihood="bernoulli"
    )
    cvae = build_cvae(cfg, x, y)
    fit(cvae, x, y, TrainConfig(num_epochs=30, batch_size=64, patience=0), progress=False)
    return cvae


def _conditional_accuracy(cvae, classifier):
    requested = torch.arange(10).repeat_interleave(20)
    draws = draw_posterior(cvae, one_hot(requested, 10), 1, decoder_noise=False, seed=0)
    images = (draws.x[0] > 0.5).float().reshape(len(requested), -1).numpy()
    return (classifier.predict(images) == requested.numpy()).mean()


@pytest.mark.slow
def test_label_conditional_cvae_on_digits():
    x, y, labels, test, train = _split()
    cvae = _fit(x[train], y[train])
    # the negative ELBO bounds the model's NLL from above; a CVAE must beat independent pixels
    # (24.4 nats here) by a wide margin (measured: 17.0-17.9 nats over seeds)
    baseline = _independent_pixel_nll(x[train], x[test])
    assert negative_elbo(cvae, y[test], x[test], num_particles=10) < baseline - 5.0
    classifier = LogisticRegression(max_iter=2000).fit(
        x[train].reshape(len(train), -1).numpy(), labels[train].numpy()
    )
    # chance is 0.1; measured 1.0 for the requested digit with decoder-mean images
    assert _conditional_accuracy(cvae, classifier) >= 0.8
    # negative control: trained with shuffled labels, the condition carries no digit identity
    shuffled = y[train][torch.randperm(len(train), generator=torch.Generator().manual_seed(1))]
    assert _conditional_accuracy(_fit(x[train], shuffled), classifier) <= 0.35


def test_dataset_errors_and_one_hot():
    with pytest.raises(UnknownProblemError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="condition"):
        load_dataset("digits", condition="colour")
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 3\)"):
        one_hot(torch.tensor([0, 3]), 3)
    x, y, info = load_dataset("digits", condition="none")
    assert x.shape == (1797, 8, 8) and y is None and set(x.unique().tolist()) == {0.0, 1.0}
