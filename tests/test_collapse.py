"""harness.collapse: a generator that ignores its source is flagged; one that copies it is not."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.collapse import (COLLAPSED_TEXT, active_units, collapse_line, collapse_metrics, kl_per_image,
                              spread)
from harness.data import LabelledImages


def _dataset(n_per_class: int = 12, seed: int = 0) -> LabelledImages:
    """Class c: a bright bar at row 2 + 2c plus per-image noise, so images of one class differ."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.randint(0, 60, (len(labels), 1, 28, 28), generator=g).to(torch.uint8)
    for i, c in enumerate(labels.tolist()):
        x[i, 0, 2 + 2 * c: 4 + 2 * c, 4:24] = 255
    return LabelledImages(x, labels, tuple(str(c) for c in range(10)))


class Templates(nn.Module):
    """A collapsed CVAE: the posterior is the prior for every image, the decoder draws a fixed class template."""

    def __init__(self, latent: int = 4):
        super().__init__()
        self.templates = nn.Parameter(torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
        self.latent = latent

    def encode(self, x, y):
        return torch.zeros(len(x), self.latent), torch.zeros(len(x), self.latent)

    def decode(self, z, y):
        return self.templates[y]


class Copier(nn.Module):
    """A CVAE that ignores the label: z is the image itself, the decoder returns it."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, x, y):
        return x.flatten(1), torch.full((len(x), 784), -6.0)

    def decode(self, z, y):
        return z.view(-1, 1, 28, 28)


def test_class_templates_are_flagged_collapsed():
    c = collapse_metrics(Templates(), _dataset(), 10)
    assert c["retention"] == pytest.approx(0.0, abs=1e-9)
    assert c["active_units"] == 0 and c["latent_dim"] == 4
    assert c["kl_nats"] == pytest.approx(0.0, abs=1e-9)  # posterior == prior
    assert c["collapsed"] is True and c["count"] == 120
    assert COLLAPSED_TEXT in collapse_line("m", c)


def test_a_model_that_copies_its_source_retains_it():
    ds = _dataset()
    c = collapse_metrics(Copier(), ds, 10)
    # swapped outputs are source images of the other 9 classes: their bars sit at 9 rows, so they vary
    # more than real images of one class do
    assert c["retention"] > 1.0
    assert c["active_units"] > 0 and c["collapsed"] is False
    assert "not collapsed" in collapse_line("m", c) and COLLAPSED_TEXT not in collapse_line("m", c)
    for r in c["retention_per_label"].values():
        assert r > 1.0


def test_retention_is_ratio_of_per_pixel_variances():
    """Hand check of one label: a decoder that returns source*0.5 halves the spread -> ratio 0.25 of
    the copier's ratio for the same picks."""
    ds = _dataset()

    class Half(Copier):
        def decode(self, z, y):
            return 0.5 * super().decode(z, y)

    full, half = collapse_metrics(Copier(), ds, 10), collapse_metrics(Half(), ds, 10)
    assert half["retention"] == pytest.approx(0.25 * full["retention"], rel=1e-6)


def test_building_blocks_against_hand_computed_values():
    mu = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 3.0]])
    assert active_units(mu) == 1  # only dim 1 varies
    assert active_units(mu[:1]) == 0
    logvar = torch.log(torch.tensor([[1.0, 4.0]]))
    # KL(N(0,1)||N(0,1)) + KL(N(1,4)||N(0,1)) = 0 + 0.5 * (1 + 4 - ln 4 - 1)
    assert float(kl_per_image(torch.tensor([[0.0, 1.0]]), logvar)[0]) == pytest.approx(0.5 * (4 - torch.log(torch.tensor(4.0)).item()))
    imgs = torch.tensor([[[[0.0, 2.0]]], [[[2.0, 2.0]]]])  # pixel 0 values 0, 2 (var 2); pixel 1 var 0
    assert spread(imgs) == pytest.approx(1.0)
