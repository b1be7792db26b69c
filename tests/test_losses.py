import math

import torch

from colorize_cli.training.losses import kl_loss, mdn_loss, recon_loss


def test_kl_zero_for_standard_normal_and_known_value():
    assert kl_loss(torch.zeros(4, 64), torch.zeros(4, 64)).item() == 0.0
    # one unit: mu=1, logvar=0 -> 0.5 * (1 + 1 - 1 - 0) = 0.5
    mu = torch.zeros(1, 64)
    mu[0, 0] = 1.0
    assert math.isclose(kl_loss(mu, torch.zeros(1, 64)).item(), 0.5)


def test_recon_loss_by_hand():
    pred = torch.zeros(2, 2, 64, 64)
    target = torch.zeros(2, 2, 64, 64)
    target[0, 0, 0, 0] = 3.0
    target[0, 1, 0, 0] = 4.0          # image 0: sqrt(9 + 16) = 5; image 1: 0
    assert math.isclose(recon_loss(pred, target).item(), 2.5)
    weights = torch.ones_like(pred) * 4.0   # sqrt(4 * 25) = 10 -> mean 5
    assert math.isclose(recon_loss(pred, target, weights).item(), 5.0)


def test_mdn_loss_picks_the_nearest_component():
    means = torch.zeros(1, 2, 64)
    means[0, 1, 0] = 1.0                     # component 1 at e0, component 0 at the origin
    weights = torch.tensor([[0.25, 0.75]])
    mu = torch.zeros(1, 64)
    mu[0, 0] = 0.9                           # nearest: component 1, distance 0.1
    logvar = torch.full((1, 64), -80.0)      # (almost) no sampling noise
    loss, dist = mdn_loss(means, weights, mu, logvar)
    expected_dist = math.sqrt(50 * 0.01)
    assert math.isclose(dist.item(), expected_dist, rel_tol=1e-4)
    assert math.isclose(loss.item(), -math.log(0.75) + expected_dist, rel_tol=1e-4)
