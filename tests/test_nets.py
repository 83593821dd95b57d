import pytest
import torch

from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.nets import Conv1dDecoder, Conv1dEncoder, FlattenMLP, GaussianHead
from ppl_cvae.nets.blocks import SCALE_FLOOR


@pytest.mark.parametrize("batch", [(1,), (3,), (2, 5)])
def test_flatten_mlp_keeps_leading_axes(batch):
    net = FlattenMLP((1, 50, 2), 7, (16,), "leaky_relu")
    assert net(torch.randn(*batch, 1, 50, 2)).shape == (*batch, 7)


@pytest.mark.parametrize("batch", [(1,), (4,), (3, 2)])
def test_conv1d_encoder_decoder_shapes(batch):
    enc = Conv1dEncoder((1, 50, 2), 12, (8, 16), "leaky_relu")
    assert enc(torch.randn(*batch, 1, 50, 2)).shape == (*batch, 12)
    dec = Conv1dDecoder(5, (1, 50, 2), (8, 16), "leaky_relu", num_params=2)
    assert dec(torch.randn(*batch, 5)).shape == (*batch, 1, 50, 2, 2)


def test_conv1d_rejects_non_sequence_shapes():
    with pytest.raises(ConfigError, match="length, channels"):
        Conv1dEncoder((3, 4, 5), 8, (8,), "relu")


def test_encoder_rejects_wrong_event_shape():
    net = FlattenMLP((3,), 2, (), "relu")
    with pytest.raises(ShapeError, match=r"event shape \(3,\)"):
        net(torch.randn(4, 5))


def test_gaussian_head_scale_is_floored():
    head = GaussianHead(3, 2)
    with torch.no_grad():
        head.linear.bias.fill_(-1e4)
    loc, scale = head(torch.zeros(6, 3))
    assert loc.shape == scale.shape == (6, 2)
    assert torch.all(scale >= SCALE_FLOOR)


@pytest.mark.parametrize("shape", [(8, 8), (13, 9), (3, 12, 7)])
@pytest.mark.parametrize("batch", [(1,), (3,), (2, 4)])
def test_conv2d_encoder_decoder_shapes(shape, batch):
    from ppl_cvae.nets import Conv2dDecoder, Conv2dEncoder

    enc = Conv2dEncoder(shape, 6, (4, 8), "leaky_relu")
    assert enc(torch.randn(*batch, *shape)).shape == (*batch, 6)
    dec = Conv2dDecoder(5, shape, (4, 8), "leaky_relu", num_params=2)
    assert dec(torch.randn(*batch, 5)).shape == (*batch, *shape, 2)


def test_conv2d_rejects_non_grid_shapes():
    from ppl_cvae.nets import Conv2dDecoder, Conv2dEncoder

    with pytest.raises(ConfigError, match=r"\(H, W\) or \(C, H, W\)"):
        Conv2dEncoder((10,), 4, (4,), "relu")
    with pytest.raises(ConfigError, match="H, W >= 4"):
        Conv2dDecoder(3, (2, 3), (4,), "relu")
