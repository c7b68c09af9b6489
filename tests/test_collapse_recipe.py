"""Free bits: the lever that keeps the quick preset's CVAE from collapsing (models.losses)."""
from __future__ import annotations

import math

import pytest
import torch

from models.losses import analytic_kl_per_dim, elbo_terms, gaussian_log_likelihood


def _out(mu, logvar, x):
    return {"mean": torch.full_like(x, 0.5), "mu": mu, "logvar": logvar, "z": mu.clone()}


def test_free_bits_floor_each_dimension_of_the_batch_mean_kl():
    x = torch.rand(3, 1, 4, 4)
    mu = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]], requires_grad=True)
    logvar = torch.zeros(3, 2)
    ll = gaussian_log_likelihood(x, torch.full_like(x, 0.5), torch.tensor(0.0)).mean()
    # dim 0: KL 0 -> floored at 0.5; dim 1: KL 0.5 * 2^2 = 2 (above the floor)
    t = elbo_terms(x, _out(mu, logvar, x), torch.tensor(0.0), kl_weight=3.0, free_bits=0.5)
    assert float(t["loss"].detach()) == pytest.approx(3.0 * (0.5 + 2.0) - float(ll), rel=1e-6)
    t["loss"].backward()
    assert mu.grad[:, 0].abs().max() == 0  # below the floor: no push towards the prior
    assert mu.grad[:, 1].abs().min() > 0
    # the reported bound is untouched by free bits
    plain = elbo_terms(x, _out(mu.detach(), logvar, x), torch.tensor(0.0))
    torch.testing.assert_close(t["elbo"], plain["elbo"])


def test_analytic_kl_per_dim_hand_value():
    kl = analytic_kl_per_dim(torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]]))
    assert float(kl) == pytest.approx(0.5 * (1 + 4 - math.log(4) - 1))

