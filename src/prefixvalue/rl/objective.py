"""The policy-update objective of `prefixvalue distrl` (docs/design.md, "DistRL"): advantages and the loss.

Three arms share one loss; they differ in the advantage each completion token gets:

- ``outcome`` (GRPO): the completion's verified reward r, normalised within its group of G completions of one
  prompt, ``(r − mean_group) / (std_group + 1e-4)`` (TRL's ``scale_rewards="group"``), on every token;
- ``td``: the TD error of the value at that token, ``δ_t = V(s_{t+1}) − V(s_t)`` with V(s_T) = r (the verified
  reward replaces the value at the end), divided by the batch's reward standard deviation (at least 0.1) so that its scale is
  GRPO's (Σ_t δ_t = r − V(s_0): GRPO with V(s_0) for the group mean as the baseline, the credit spread by TD);
- ``distrl``: ``td`` plus, at every position, the TD advantages A(s_t, y') = V(s_t ⊕ y') − V(s_t) of the policy's
  top-k candidate tokens y' other than the sampled one, through the candidate term below;
- ``outcome-distrl``: ``outcome`` on the sampled tokens plus the candidate term (the counterfactual updates on top
  of GRPO, the value consulted for the unsampled tokens only).

Loss (TRL's GRPO defaults: PPO clipping ε = 0.2, no KL term, DAPO normalisation, one update per generation):

    L = [ Σ_t −min(ρ_t A_t, clip(ρ_t, 1 ± ε) A_t)  −  c Σ_t Σ_{y' ∈ C_t} A(s_t, y') π_θ(y'|s_t) ] / N_tokens
        + β · KL_k3(π_θ ‖ π_ref) per token (β = 0 by default)

ρ_t = π_θ(y_t|s_t) / π_old(y_t|s_t) is 1 at the single update of each generation (its gradient is the policy
gradient), and c is the candidate coefficient (0.1 by default, with top-5 candidates). The candidate term is the
gradient of E_{y'~π_θ}[A(s_t, y')] restricted to C_t: it raises the candidates the value says are better than
the prefix and lowers the worse ones in proportion to their probability, without sampling them.
"""

from __future__ import annotations

import torch

#: the advantage arms (`DistRLConfig.advantage`)
ARMS = ("outcome", "td", "distrl", "outcome-distrl")
#: the group standard deviation's floor in GRPO's normalisation (TRL's)
GROUP_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's advantages [N] of rewards [N] laid out as consecutive groups of `group_size` completions of one
    prompt: ``(r − mean) / (std + 1e-4)`` within each group (unbiased std, as TRL)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.view(-1, group_size).double()
    std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
    return ((g - g.mean(dim=1, keepdim=True)) / (std + GROUP_EPS)).view(-1).to(rewards.dtype)


#: the floor of `reward_scale`: a batch whose rewards (nearly) all agree must not blow its TD errors up
SCALE_FLOOR = 0.1


def reward_scale(rewards: torch.Tensor) -> float:
    """What dense advantages are divided by: the batch's reward standard deviation, at least `SCALE_FLOOR`, so that
    their sum along a completion is on GRPO's scale."""
    return max(float(rewards.double().std().item()), SCALE_FLOOR) if rewards.numel() > 1 else 1.0


def td_advantages(values: list[torch.Tensor], rewards: torch.Tensor) -> list[torch.Tensor]:
    """Per completion i the TD errors [T_i] of its prefix values `values[i]` [T_i + 1] (entry t after t completion
    tokens): δ_t = V(s_{t+1}) − V(s_t), with V(s_T) replaced by the verified reward r_i."""
    out = []
    for v, r in zip(values, rewards):
        v = v.double().clone()
        if v.numel() < 2:
            raise ValueError("a completion needs at least one token for its TD errors")
        v[-1] = float(r)
        out.append(v[1:] - v[:-1])
    return out


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    candidate_probs: torch.Tensor | None = None,
    candidate_advantages: torch.Tensor | None = None,
    candidate_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (module docstring) and its parts.

    logprobs, old_logprobs, advantages, mask: [B, T] over completion tokens (mask 1 on real tokens);
    candidate_probs, candidate_advantages: [B, T, K] (π_θ of each candidate, with grad, and its advantage; 0 on
    padded candidates); ref_logprobs: [B, T] for the KL term when beta > 0; num_tokens: the normaliser (the
    tokens of the whole generation batch across processes; default the mask's sum)."""
    mask = mask.to(logprobs.dtype)
    n = float(num_tokens) if num_tokens is not None else float(mask.sum().clamp(min=1.0))
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon)
    adv = advantages.to(logprobs.dtype)
    per_token = -torch.min(ratio * adv, clipped * adv)
    parts = {"clip_fraction": float((((ratio - clipped).abs() > 0).to(mask.dtype) * mask).sum() / n)}
    loss = (per_token * mask).sum() / n
    parts["sampled_loss"] = float(loss.detach())
    if candidate_probs is not None and candidate_advantages is not None and candidate_coef:
        cand = -(candidate_advantages.to(candidate_probs.dtype) * candidate_probs).sum(-1)
        cand_loss = candidate_coef * (cand * mask).sum() / n
        loss = loss + cand_loss
        parts["candidate_loss"] = float(cand_loss.detach())
    if beta and ref_logprobs is not None:
        d = ref_logprobs.detach() - logprobs
        kl = torch.exp(d) - d - 1.0  # k3, as TRL
        kl_loss = beta * (kl * mask).sum() / n
        loss = loss + kl_loss
        parts["kl_loss"] = float(kl_loss.detach())
    return loss, parts
