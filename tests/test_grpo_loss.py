"""The GRPO objective against hand-computed values: advantages, clipping, masking, the KL term."""

import math

import pytest
import torch

from compressmem.training.grpo_loss import clipped_policy_loss, group_advantages


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    advantages = group_advantages(rewards, eps=0.0 + 1e-12)
    std = math.sqrt(1 / 3)  # sample std of (1, 0, 0, 1): deviations 0.5, squares sum 1, over n - 1 = 3
    torch.testing.assert_close(advantages[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.equal(advantages[1], torch.zeros(4))  # a group that all scored alike teaches nothing
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.tensor([1.0, 0.0]))


def test_clipping_and_masking_by_hand():
    old = torch.zeros(2, 3)
    # row 0: ratios e^0.5 (clipped to 1.2 for a positive advantage), 1, and a masked token
    # row 1: ratio e^-0.5 with a negative advantage: clipped to 0.8, and -min(-r, -0.8) = 0.8
    new = torch.tensor([[0.5, 0.0, 3.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages = torch.tensor([1.0, -1.0])
    loss = clipped_policy_loss(new, old, advantages, mask, clip=0.2)
    expected = (-1.2 - 1.0 + 0.8) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # clipped tokens and the masked one get no gradient; the unclipped one gets -A * r / count
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, -1 / 3, 0.0], [0.0, 0.0, 0.0]]))


def test_kl_penalty_by_hand():
    logprobs = torch.tensor([[-1.0]])
    ref = torch.tensor([[-1.5]])
    loss = clipped_policy_loss(logprobs, logprobs, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1,
                               ref_logprobs=ref)
    log_ratio = -0.5
    assert loss.item() == pytest.approx(0.1 * (math.exp(log_ratio) - log_ratio - 1), abs=1e-7)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        clipped_policy_loss(logprobs, logprobs, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1)
    with pytest.raises(ValueError, match="advantages must be"):
        clipped_policy_loss(logprobs, logprobs, torch.tensor([0.0, 1.0]), torch.ones(1, 1))
