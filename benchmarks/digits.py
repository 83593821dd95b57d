"""Digits benchmark: test ELBO, label-conditional accuracy and fit time, MLP against conv.

For each network (``mlp``, ``conv2d``): fit a label-conditional CVAE and an unconditional VAE
on scikit-learn's 8x8 digits (binarised; 1497 training and 300 test images, fixed split), and
print the test negative ELBO (nats per image, 10 particles), the accuracy with which a logistic
regression trained on the training images recognises the requested digit in 200 conditional
samples (decoder means thresholded at 0.5; chance 0.1), and the fit time. Reference points: the
independent-pixel and class-conditional independent-pixel models' test NLL.

Run::

    python benchmarks/digits.py [--epochs 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.linear_model import LogisticRegression

from inference import draw_posterior
from ppl_cvae import DataSource, Overrides, build_cvae, fit, resolve_settings
from ppl_cvae.data.datasets import load_dataset, one_hot
from ppl_cvae.train import negative_elbo


def bernoulli_nll(p, x):
    p = p.clamp(1e-3, 1 - 1e-3)
    return -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1).mean().item()


def main(args):
    torch.set_num_threads(args.threads)
    x, y, info = load_dataset("digits")
    labels = info["labels"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = perm[:300], perm[300:]
    per_class = torch.stack([x[train][labels[train] == k].mean(0) for k in range(10)])
    print(f"threads {torch.get_num_threads()}, {args.epochs} epochs, seed {args.seed}")
    print(
        f"reference: independent pixels {bernoulli_nll(x[train].mean(0), x[test]):.2f} nats, "
        f"class-conditional independent pixels "
        f"{bernoulli_nll(per_class[labels[test]], x[test]):.2f} nats (test NLL per image)"
    )
    classifier = LogisticRegression(max_iter=2000).fit(
        x[train].reshape(len(train), -1).numpy(), labels[train].numpy()
    )
    requested = torch.arange(10).repeat_interleave(20)
    for network in ("mlp", "conv2d"):
        for conditional in (True, False):
            yt = y[train] if conditional else None
            # the settings of `ppl-cvae fit --dataset digits`, with this network family
            cfg, train_config = resolve_settings(
                DataSource.of(x[train], yt, dataset="digits"),
                Overrides(
                    model={"network": network, "conv_channels": (16, 32), "feature_dim": 64},
                    train={"num_epochs": args.epochs, "patience": 0, "seed": args.seed},
                ),
            )
            model = build_cvae(cfg, x[train], yt)
            start = time.perf_counter()
            fit(model, x[train], yt, train_config, progress=False)
            seconds = time.perf_counter() - start
            loss = negative_elbo(model, y[test] if conditional else None, x[test], num_particles=10)
            line = (
                f"{network:6s} {'CVAE' if conditional else 'VAE '}: test negative ELBO "
                f"{loss:.2f} nats/image, fit {seconds:.1f} s"
            )
            if conditional:
                draws = draw_posterior(
                    model, one_hot(requested, 10), 1, decoder_noise=False, seed=args.seed
                )
                images = (draws.x[0] > 0.5).float().reshape(len(requested), -1).numpy()
                accuracy = (classifier.predict(images) == requested.numpy()).mean()
                line += f", conditional accuracy {accuracy:.3f}"
            print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
