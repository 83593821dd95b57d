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
    with pytest.raises(UnknownProblemError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="condition"):
        load_dataset("digits", condition="colour")
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 3\)"):
        one_hot(torch.tensor([0, 3]), 3)
    x, y, info = load_dataset("digits", condition="none")
    assert x.shape == (1797, 8, 8) and y is None and set(x.unique().tolist()) == {0.0, 1.0}


def _write_idx(path, array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.tobytes())


def test_mnist_idx_files_round_trip_and_errors(tmp_path):
    import gzip

    import numpy as np

    from ppl_cvae.data.datasets import load_mnist, read_idx
    from ppl_cvae.errors import DataError

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images, 0x08)
    _write_idx(tmp_path / "labels.tmp", labels, 0x08)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress((tmp_path / "labels.tmp").read_bytes())
    )
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte"), images)
    x, y = load_mnist(tmp_path, binarize=False)
    assert x.shape == (5, 28, 28) and y.tolist() == [3, 1, 4, 1, 5]
    assert torch.allclose(x, torch.as_tensor(images / 255.0, dtype=torch.float32))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x08\x03\x00\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic number 08030001"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(DataError, match="needs 3920"):
        read_idx(short)
    with pytest.raises(DataError, match="no t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, split="t10k")


def test_image_folder_with_classes(tmp_path):
    import numpy as np
    from PIL import Image

    from ppl_cvae.data.datasets import load_image_folder
    from ppl_cvae.errors import DataError

    for k, name in enumerate(["cats", "dogs"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            pixels = np.full((20, 30), 60 * (k + 1) + i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cats" / "notes.txt").write_text("ignored")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    hidden = tmp_path / ".ipynb_checkpoints" / "0.png"
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(hidden)
    x, labels, classes = load_image_folder(tmp_path, size=(10, 12))
    assert x.shape == (4, 10, 12) and classes == ["cats", "dogs"]
    assert labels.tolist() == [0, 0, 1, 1]
    assert torch.allclose(x[2], torch.full((10, 12), 120 / 255.0), atol=1e-6)  # uniform stays
    rgb, _, _ = load_image_folder(tmp_path, size=(10, 12), grayscale=False)
    assert rgb.shape == (4, 3, 10, 12)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")


def test_colour_images_read_as_grey_are_warned_about(tmp_path, caplog):
    """Red and green of equal luma became one grey in silence (the seventeenth audit)."""
    import numpy as np
    from PIL import Image

    from ppl_cvae.data.datasets import load_image_folder

    grey = np.full((8, 8, 3), 90, dtype=np.uint8)  # an RGB file whose channels agree
    for name, pixels in [("a", grey), ("b", grey)]:
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "0.png")
    caplog.clear()
    load_image_folder(tmp_path, size=(8, 8))
    assert "colour" not in caplog.text
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 200
    Image.fromarray(red).save(tmp_path / "b" / "1.png")
    x, _, _ = load_image_folder(tmp_path, size=(8, 8))
    assert "holds colour images (the first: 1.png), read as grey" in caplog.text
    assert float(x[-1].mean()) == pytest.approx(round(0.299 * 200) / 255, abs=1e-6)
    caplog.clear()
    load_image_folder(tmp_path, size=(8, 8), grayscale=False)
    assert "colour" not in caplog.text


def test_image_folder_odd_files(tmp_path, caplog):
    """The audit's image folders: a 16-bit PNG keeps its grey levels (before, Pillow's "L"
    conversion clipped them to 0 or 1); hidden files (``._0.png``) are left out; an image
    beside the class sub-folders is warned of; a FIFO is refused by name (before, the fit
    hung opening it); a decompression bomb is a DataError (before, a traceback); an empty
    class folder and a link to another class's folder are refused."""
    import os

    import numpy as np
    from PIL import Image

    from ppl_cvae.data.datasets import load_image_folder
    from ppl_cvae.errors import DataError

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(tmp_path / name / "0.png")
    deep = np.full((8, 8), 30 * 257, dtype=np.uint16)  # 30/255 of full scale, in 16 bits
    Image.fromarray(deep).save(tmp_path / "b" / "1.png")
    (tmp_path / "a" / "._0.png").write_bytes(b"AppleDouble, not an image")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "loose.png")
    x, labels, classes = load_image_folder(tmp_path, size=(4, 4))
    assert classes == ["a", "b"] and labels.tolist() == [0, 1, 1]
    assert torch.allclose(x[2], torch.full((4, 4), 30 / 255), atol=1e-5)
    assert "1 image(s) directly in" in caplog.text and "left out" in caplog.text
    rgb, _, _ = load_image_folder(tmp_path, size=(4, 4), grayscale=False)
    assert torch.allclose(rgb[2], torch.full((3, 4, 4), 30 / 255), atol=1e-5)
    os.mkfifo(tmp_path / "a" / "zz.png")
    with pytest.raises(DataError, match="is not a regular file"):
        load_image_folder(tmp_path, size=(4, 4))
    (tmp_path / "a" / "zz.png").unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="holds no .* images: a class without images"):
        load_image_folder(tmp_path, size=(4, 4))
    (tmp_path / "c").rmdir()
    (tmp_path / "d").symlink_to(tmp_path / "a", target_is_directory=True)
    with pytest.raises(DataError, match=r"\['a', 'd'\] .* are the same folder"):
        load_image_folder(tmp_path, size=(4, 4))
    (tmp_path / "d").unlink()
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 10  # 8 x 8 = 64 pixels is more than twice the limit: a "bomb"
    try:
        with pytest.raises(DataError, match="cannot read image .*decompression bomb"):
            load_image_folder(tmp_path, size=(4, 4))
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_a_repeat_of_an_image_folder_run_refuses_changed_images(tmp_path, capsys, monkeypatch):
    """``config.json`` of a ``--dataset folder`` run records the digest of the images and
    labels read; ``fit --config`` refuses the folder once an image changed (before: it
    trained on it in silence, 36 of 39 tensors differing)."""
    import numpy as np
    from PIL import Image

    from ppl_cvae.cli import main

    monkeypatch.chdir(tmp_path)
    for k, name in enumerate(["a", "b"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((8, 8), 40 * k + 5 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    fit = ["fit", "--dataset", "folder", "--dataset-path", "imgs", "--image-size", "8,8",
           "--epochs", "1", "--hidden-dims", "8", "--latent-dim", "2", "--quiet"]
    assert main([*fit, "--out", "r1"]) == 0
    assert main(["fit", "--config", "r1/config.json", "--quiet", "--out", "r2"]) == 0
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "imgs" / "a" / "0.png")
    capsys.readouterr()
    assert main(["fit", "--config", "r1/config.json", "--quiet", "--out", "r3"]) == 2
    assert "fitted on other pairs than those of dataset 'folder' in 'imgs'" in (
        capsys.readouterr().err
    )


def test_training_frames_show_images_of_every_class_in_the_folders_colours(tmp_path):
    """The reconstruction frame showed x[:10], all of the first class (the seventeenth audit);
    a folder's grey levels were drawn as ink (1 black)."""
    from ppl_cvae.cli.fit import _image_frames

    labels = torch.arange(10).repeat_interleave(30)  # the classes in order, as folders load
    x = torch.rand(300, 8, 8)
    y = torch.eye(10)[labels]
    config = ModelConfig(x_shape=(8, 8), y_shape=(10,), latent_dim=2, hidden_dims=(8,))
    frames = _image_frames(tmp_path, x, y, config, 10, cmap="gray")
    assert sorted(frames.y.argmax(1).tolist()) == list(range(10))
    assert frames.cmap == "gray"
