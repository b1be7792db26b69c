import pytest
import torch

from colorize_cli.model.networks import CVAE, MDN, count_parameters, split_mixture


def test_parameter_counts_match_the_seed():
    assert count_parameters(CVAE()) == 33_368_770
    assert count_parameters(MDN()) == 13_952_008


def test_cvae_shapes():
    model = CVAE().eval()
    ab = torch.zeros(3, 2, 64, 64)
    grey = torch.zeros(3, 1, 64, 64)
    mu, logvar, out = model(ab, grey)
    assert mu.shape == logvar.shape == (3, 64)
    assert out.shape == (3, 2, 64, 64)
    assert out.abs().max() <= 1.0  # tanh output
    assert model.decode(torch.randn(3, 64), grey).shape == (3, 2, 64, 64)


def test_mdn_shapes_and_mixture_split():
    model = MDN().eval()
    params = model(torch.randn(2, 512, 28, 28))
    assert params.shape == (2, 8 * 65)
    means, weights = split_mixture(params, 8, 64)
    assert means.shape == (2, 8, 64)
    assert torch.allclose(weights.sum(1), torch.ones(2))
    # the seed's layout: the first 8*64 outputs are the means, the last 8 the weight logits
    assert torch.equal(means[1, 3], params[1, 3 * 64:4 * 64])


def test_eval_mode_is_deterministic():
    model = MDN().eval()
    feats = torch.randn(1, 512, 28, 28)
    assert torch.equal(model(feats), model(feats))


def test_decoder_forward_samples_equals_repeated_forward():
    import torch

    from colorize_cli.model.networks import CVAE

    torch.manual_seed(0)
    model = CVAE().eval()
    for m in model.modules():   # non-trivial BatchNorm statistics, so the check covers them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    grey, z = torch.randn(3, 1, 64, 64), torch.randn(3, 5, 64)
    with torch.no_grad():
        feats = model.cond_encoder(grey)
        repeated = model.decoder(z.reshape(15, 64), *[f.repeat_interleave(5, 0) for f in feats])
        shared = model.decoder.forward_samples(z, *feats)
    assert shared.shape == (15, 2, 64, 64)
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=0)


def test_upsampled_conv_is_the_convolution_of_the_upsampled_image():
    # on the input grid by output phase, the border the direct way: the same function, to float64 rounding
    import torch
    import torch.nn.functional as F

    from colorize_cli.model.networks import CVAE, upsampled_conv

    torch.manual_seed(0)
    for k, shape in ((5, (2, 3, 9, 7)), (3, (1, 4, 6, 11)), (5, (2, 64, 32, 32))):
        x = torch.randn(*shape, dtype=torch.float64)
        w, b = torch.randn(2, shape[1], k, k, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        exact = F.conv2d(up, w, b, padding=k // 2)
        assert (upsampled_conv(x, w, b) - exact).abs().max() < 1e-12 * exact.abs().max()
    model = CVAE().double().eval()
    grey, z = torch.randn(2, 1, 64, 64, dtype=torch.float64), torch.randn(2, 3, 64, dtype=torch.float64)
    with torch.no_grad():
        feats = model.cond_encoder(grey)
        direct = model.decoder.forward_samples(z, *feats)
        polyphase = model.decoder.forward_samples(z, *feats, polyphase=True)
    assert (polyphase - direct).abs().max() < 1e-12


def test_vgg_architecture_is_torchvisions_vgg16_features():
    torchvision = pytest.importorskip("torchvision")
    from colorize_cli.model.vgg import VGG_LAYERS, vgg_architecture

    ours = vgg_architecture()
    theirs = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])[:VGG_LAYERS]
    assert [repr(m) for m in ours] == [repr(m) for m in theirs]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
