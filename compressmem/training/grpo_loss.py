"""The GRPO objective: group-normalised advantages and a clipped, masked policy loss.

A rollout of compressmem is several conversations (one per memory update, then the answer); as in
MemAgent's multi-conversation RL, every token any of them generated gets its rollout's advantage.
Rows of the loss are conversations: `advantages` holds one value per row (its rollout's), `mask`
marks the generated tokens, and the loss is the mean over all generated tokens of the batch.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """`(r - mean) / (std + eps)` within each group; `rewards` is `[groups, group_size]`.

    The standard deviation is the sample one (as TRL's GRPOTrainer); a group whose rollouts all
    scored alike gets zero advantages, so it teaches nothing rather than noise.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, group_size] with group_size >= 2, got {tuple(rewards.shape)}.")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO-style clipped objective with an optional KL penalty to a reference policy, as a loss to minimise.

    Args:
        logprobs: `[rows, tokens]` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: the same under the policy that sampled them (no gradient).
        advantages: `[rows]`, each conversation's rollout advantage.
        mask: `[rows, tokens]` bool or 0/1, the generated tokens (prompt and padding excluded).
        clip: the ratio is clipped to `[1 - clip, 1 + clip]`.
        kl_coef: weight of the k3 estimate of KL(policy || reference) per token; needs `ref_logprobs`.
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and mask "
            f"{tuple(mask.shape)} must have one shape [rows, tokens]."
        )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [rows] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}.")
    if kl_coef and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs, the reference policy's log-probabilities.")
    mask = mask.float()
    ratio = (logprobs - old_logprobs.detach()).exp()
    gain = advantages.detach().unsqueeze(1)
    per_token = -torch.minimum(ratio * gain, ratio.clamp(1 - clip, 1 + clip) * gain)
    if kl_coef:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs, the reference policy's log-probabilities.")
        log_ratio = ref_logprobs.detach() - logprobs
        per_token = per_token + kl_coef * (log_ratio.exp() - log_ratio - 1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)
