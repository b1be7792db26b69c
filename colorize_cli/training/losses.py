"""The seed's losses: CVAE (KL + weighted L2) and MDN (nearest-component negative log-likelihood)."""

from __future__ import annotations

import torch

#: the seed scales squared latent distances by 50, i.e. a fixed isotropic sigma of 0.1
MDN_DIST_SCALE = 50.0


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Sum over batch and latent of KL(N(mu, exp(logvar)) || N(0, I)), as the seed (not averaged)."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar)


def recon_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per image sqrt(sum w*(pred-target)^2) over all ab values, averaged over the batch.

    pred, target, weights: (B, 2, H, W). Without weights this is the seed's unweighted L2 metric.
    """
    sq = (pred.float() - target.float()).pow(2)
    if weights is not None:
        sq = sq * weights
    return torch.sqrt(sq.flatten(1).sum(1)).mean()


#: ``--mdn-loss`` choices: the seed's hard assignment, or its soft (log-sum-exp) form
MDN_LOSSES = ("nearest", "soft")


def mdn_loss(means: torch.Tensor, weights: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             generator: torch.Generator | None = None, kind: str = "nearest",
             eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's MDN loss against a sample z of the (frozen) CVAE posterior.

    means (B, K, D), weights (B, K) from the MDN; mu, logvar (B, D) from the colour encoder;
    d_k = sqrt(50 * |z - mean_k|^2).
    - ``nearest`` (the seed's): mean over batch of  -log pi_k* + d_k*, k* the nearest component. Only the
      nearest mean moves, and the weights learn how often each component is nearest.
    - ``soft``: mean over batch of  -log sum_k pi_k exp(-d_k), the mixture likelihood whose hard-min
      approximation the seed's loss is. Each component's mean and weight are trained by its responsibility
      for z, so the weights track how well each mean explains the colours, not only who is nearest.
    ``eps`` (B, D): the standard normal draw of z (default: drawn here, from ``generator`` when given).
    Returns (loss, the nearest distance alone).
    """
    if kind not in MDN_LOSSES:
        raise ValueError(f"unknown MDN loss {kind!r}: expected one of {', '.join(MDN_LOSSES)}")
    # a CPU generator (for repeatable test losses) draws on the CPU; otherwise draw where mu lives
    if eps is None:
        eps = (torch.randn(mu.shape, generator=generator).to(mu.device) if generator is not None
               else torch.randn(mu.shape, device=mu.device))
    z = mu.float() + eps * torch.exp(0.5 * logvar.float())
    dist = torch.sqrt(MDN_DIST_SCALE * (z[:, None, :] - means.float()).pow(2).sum(-1))  # (B, K)
    dist_min, nearest = dist.min(1)
    if kind == "soft":
        log_mix = torch.logsumexp(torch.log(weights.float() + 1e-30) - dist, dim=1)
        return -log_mix.mean(), dist_min.mean()
    pi_nearest = weights.gather(1, nearest[:, None])[:, 0]
    return torch.mean(-torch.log(pi_nearest + 1e-30) + dist_min), dist_min.mean()
