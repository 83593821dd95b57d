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


@pytest.mark.parametrize("shape", [(8, 8), (13, 9), (3, 12, 7)])
def test_conv2d_decoder_extra_maps_reach_their_own_cells(shape):
    """The last stage reads the extra maps at full resolution, aligned with the output grid.

    With the feature path silenced (zero weights), one stage copying its extra channel and
    the 1x1 output reading that copy, the output equals the maps cell for cell, for grids that
    the stages must pad (13 x 9: 16 x 12 before the crop); a misaligned pad or crop fails.
    """
    from ppl_cvae.nets import Conv2dDecoder

    channels = shape[0] if len(shape) == 3 else 1
    dec = Conv2dDecoder(5, shape, (4, 8), "relu", extra_channels=2)
    with torch.no_grad():
        for p in dec.parameters():
            p.zero_()
        last = dec.stages[-1]  # input channels: 8 features of the previous stage, then 2 maps
        last.weight[0, 8 + 1, 1, 1] = 1.0  # copy the second map into channel 0
        dec.out.weight[:, 0, 0, 0] = 1.0  # every output channel reads channel 0
    grid = shape[-2:]
    maps = torch.rand(3, 2, *grid) + 0.1  # positive: relu keeps them
    out = dec(torch.randn(4, 3, 5), maps)
    assert out.shape == (4, 3, *shape, 1)
    expect = maps[:, 1].reshape(3, *(1,) * (len(shape) - 2), *grid).expand(3, *shape)
    torch.testing.assert_close(out[..., 0], expect.expand(4, *expect.shape))
    if channels > 1:
        assert torch.equal(out[:, :, 0], out[:, :, -1])
    with pytest.raises(ConfigError, match="2 extra maps, got none"):
        dec(torch.randn(3, 5))


def test_y_maps_config_and_decoder():
    """``y_maps`` builds a decoder whose output depends on y through the maps alone too."""
    from ppl_cvae.config import ModelConfig
    from ppl_cvae.models.cvae import CVAE

    base = dict(x_shape=(12, 10), y_shape=(7,), network="conv2d", conv_channels=(4, 8),
                feature_dim=8, likelihood="bernoulli", latent_dim=3)
    cvae = CVAE(ModelConfig(**base, y_maps=2))
    dec = cvae.decoder
    assert dec.y_maps is not None and dec.y_maps.out_features == 2 * 12 * 10
    y = torch.randn(4, 7)
    loc, _ = dec(torch.randn(6, 4, 3), y)
    assert loc.shape == (6, 4, 12, 10)
    plain = CVAE(ModelConfig(**base))
    assert plain.decoder.y_maps is None
    # silence the other path of y (its features into the first layer; no linear skip here):
    # then only the model with maps still reads y
    z, y2 = torch.randn(6, 4, 3), torch.randn(4, 7)
    for model, reads_y in ((cvae, True), (plain, False)):
        with torch.no_grad():
            model.decoder.input.c_part.weight.zero_()
            first, second = model.decoder(z, y)[0], model.decoder(z, y2)[0]
        assert bool((first != second).any()) is reads_y
    extra = sum(p.numel() for p in cvae.parameters()) - sum(p.numel() for p in plain.parameters())
    # the linear maps (7 + 1) x 240 and 2 more input channels of each 3x3 stage convolution
    assert extra == 8 * 240 + 2 * 9 * (8 + 4)
    for bad, match in (
        (dict(network="mlp", hidden_dims=(8,)), "network='conv2d'"),
        (dict(x_shape=(12,), network="conv1d"), "network='conv2d'"),
        (dict(y_shape=None, prior="standard_normal"), "conditional model"),
        (dict(y_maps=-1), "y_maps must be an integer >= 0"),
        (dict(y_maps=1.5), "y_maps must be an integer >= 0"),
    ):
        kwargs = {**base, "y_maps": 2, **bad}
        with pytest.raises(ConfigError, match=match):
            ModelConfig(**kwargs)


def test_conv2d_rejects_non_grid_shapes():
    from ppl_cvae.nets import Conv2dDecoder, Conv2dEncoder

    with pytest.raises(ConfigError, match=r"\(H, W\) or \(C, H, W\)"):
        Conv2dEncoder((10,), 4, (4,), "relu")
    with pytest.raises(ConfigError, match="H, W >= 4"):
        Conv2dDecoder(3, (2, 3), (4,), "relu")


# ----------------------------------------------------------------------------- the three nets
from ppl_cvae.config import ModelConfig  # noqa: E402
from ppl_cvae.models.cvae import CVAE  # noqa: E402
from ppl_cvae.nets import (  # noqa: E402
    Decoder,
    NetworkFamily,
    PriorNet,
    RecognitionNet,
    build_networks,
    network_names,
    register_network,
)
from ppl_cvae.nets.factory import _FAMILIES, _mlp_body  # noqa: E402


def test_build_networks_gives_the_three_named_nets():
    cfg = ModelConfig(x_shape=(3,), y_shape=(80,), hidden_dims=(8, 8), y_embedding="shared")
    nets = build_networks(cfg)
    assert isinstance(nets.recognition, RecognitionNet)
    assert isinstance(nets.prior, PriorNet) and isinstance(nets.decoder, Decoder)
    # one y embedding shared by all three
    assert nets.recognition.y_encoder is nets.prior.y_encoder is nets.decoder.y_encoder
    vae = build_networks(ModelConfig(x_shape=(3,), y_shape=None, prior="standard_normal"))
    assert vae.prior is None and vae.decoder.y_encoder is None
    # the model holds the networks and nothing else that trains
    cvae = CVAE(cfg)
    parts = (cvae.recognition_net, cvae.prior_net, cvae.decoder)
    assert {id(p) for p in cvae.parameters()} == {id(p) for n in parts for p in n.parameters()}


def test_decoder_scale_by_likelihood():
    cfg = ModelConfig(x_shape=(4,), y_shape=(2,), hidden_dims=(8,), init_scale=0.2)
    dec = build_networks(cfg).decoder
    loc, scale = dec(torch.randn(3, 5, cfg.latent_dim), torch.randn(5, 2))
    assert loc.shape == (3, 5, 4)
    assert torch.allclose(scale, torch.full((4,), 0.2))  # starts at init_scale
    bern = build_networks(ModelConfig(x_shape=(4,), y_shape=(2,), likelihood="bernoulli"))
    assert bern.decoder(torch.randn(5, 8), torch.randn(5, 2))[1] is None
    learned = build_networks(ModelConfig(x_shape=(4,), y_shape=(2,), likelihood="gaussian_decoder"))
    assert (learned.decoder(torch.randn(5, 8), torch.randn(5, 2))[1] > SCALE_FLOOR).all()


def test_register_network_family():
    def tiny_encoder(config, shape):
        return torch.nn.Flatten(start_dim=-len(shape)), int(torch.Size(shape).numel())

    with pytest.raises(ConfigError, match=r"unknown network 'tiny'.*'mlp'"):
        ModelConfig(x_shape=(3,), y_shape=(2,), network="tiny")
    register_network("tiny", NetworkFamily(tiny_encoder, _mlp_body))
    try:
        assert "tiny" in network_names()
        cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), network="tiny", hidden_dims=(8,)))
        assert cvae.recognition_net.x_encoder.__class__ is torch.nn.Flatten
        loc, scale = cvae.recognition_params(torch.zeros(4, 2), torch.zeros(4, 3))
        assert loc.shape == scale.shape == (4, cvae.config.latent_dim)
        with pytest.raises(ConfigError, match="exists"):
            register_network("tiny", NetworkFamily(tiny_encoder, _mlp_body))
        with pytest.raises(ConfigError, match="Python name"):
            register_network("not a name", NetworkFamily(tiny_encoder, _mlp_body))
    finally:
        del _FAMILIES["tiny"]
