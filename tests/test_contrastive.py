"""NT-Xent: against a float64 loop, its invariances, a closed form, and padding."""

from __future__ import annotations

import math

import pytest
import torch

from avfl.fl.contrastive import nt_xent


def _loop(view1, view2, temperature):
    """SimCLR's loss, one view at a time, in float64."""
    z = [v / v.norm() for v in torch.cat([view1, view2]).double()]
    n = view1.shape[0]
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        denominator = sum(
            math.exp(float(z[i] @ z[j]) / temperature) for j in range(2 * n) if j != i
        )
        losses.append(-float(z[i] @ z[partner]) / temperature + math.log(denominator))
    return [0.5 * (losses[i] + losses[i + n]) for i in range(n)]


def test_nt_xent_matches_a_float64_loop_and_is_invariant_to_scale_and_view_swap():
    torch.manual_seed(0)
    a, b = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    ones = torch.ones(6, dtype=torch.float64)
    got = nt_xent(a, b, ones, 0.5)
    assert torch.allclose(got, torch.tensor(_loop(a, b, 0.5), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(nt_xent(3.0 * a, 0.2 * b, ones, 0.5), got, atol=1e-12)
    assert torch.allclose(nt_xent(b, a, ones, 0.5), got, atol=1e-12)


@pytest.mark.parametrize("n,temperature", [(2, 0.5), (4, 0.1), (7, 1.0)])
def test_identical_views_of_orthonormal_items_give_the_closed_form(n, temperature):
    views = torch.eye(8, dtype=torch.float64)[:n]
    got = nt_xent(views, views.clone(), torch.ones(n, dtype=torch.float64), temperature)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / temperature))
    assert torch.allclose(got, torch.full((n,), expected, dtype=torch.float64), atol=1e-12)


def test_shuffled_positives_raise_the_loss():
    torch.manual_seed(1)
    items = torch.randn(8, 16)
    view1, view2 = items + 0.1 * torch.randn(8, 16), items + 0.1 * torch.randn(8, 16)
    aligned = nt_xent(view1, view2, torch.ones(8), 0.5).mean()
    shuffled = nt_xent(view1, view2[torch.roll(torch.arange(8), 1)], torch.ones(8), 0.5).mean()
    assert shuffled > aligned + 1.0


def test_padding_is_neither_a_negative_nor_a_gradient():
    """Three real items padded to five: the real items' losses and gradients equal those of
    the three alone; the padded items' weighted loss is zero and sends no gradient."""
    torch.manual_seed(2)
    a = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    padded = nt_xent(a, b, weight, 0.5)
    alone = nt_xent(a[:3], b[:3], weight[:3], 0.5)
    assert torch.allclose(padded[:3], alone, atol=1e-12)
    grads = torch.autograd.grad((padded * weight).sum(), [a, b])
    alone_grads = torch.autograd.grad(alone.sum(), [a, b])
    for got, want in zip(grads, alone_grads, strict=True):
        assert torch.allclose(got[:3], want[:3], atol=1e-12) and not got[3:].any()
    # The control: with every weight 1 the padding's views are negatives and the loss changes.
    leaky = nt_xent(a, b, torch.ones(5, dtype=torch.float64), 0.5)
    assert not torch.allclose(leaky[:3], alone, atol=1e-6)
