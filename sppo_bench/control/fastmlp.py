"""The control update's forward and backward passes written out by hand, fused with the PPO
losses: no autograd graph, one batched matmul per layer and direction for all seeds.

A seed-stacked MLP (``StackedMLP``: weights ``W_i [S, o_i, i_i]``, biases ``b_i [S, o_i]``,
activation f between the layers) on inputs ``x [S, n, d]``:

    a_0 = x,   z_i = a_i W_i^T + b_i,   a_{i+1} = f(z_i)   (no f after the last layer).

Backward from g = dL/dz of the last layer ``[S, n, o]``, layer i from the top down:

    dL/dW_i = g^T a_i,   dL/db_i = sum_n g,   dL/da_i = g W_i,
    g <- dL/da_i * f'(z_{i-1})  with  f' = 1 - a_i^2 (tanh),  1[a_i > 0] (relu).

dL/dz of the last layer is written out for the clipped surrogate with its entropy bonus
(categorical and diagonal-Gaussian heads) and for the three critic losses of ``core.critics``.
Each seed's loss is reduced with its own mini-batch's counts (``aggregation_weights``: w_bt with
aggregate(l) = sum_bt w_bt l_bt). Values and gradients equal autograd's over ``core.losses`` /
``core.critics`` to float rounding, including autograd's rule at ties of max / min (half the
gradient to each side) and clamp's inclusive bounds (``tests/test_fastmlp.py``).

``bf16=True`` runs the matmuls on bf16 copies of weights and activations (AMX / AVX-512 BF16)
with fp32 results; activations, losses, gradients and the master weights stay fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sppo_bench.control.policies import gaussian_log_prob_entropy
from sppo_bench.control.stack import StackedMLP, StackedPolicy, StackedValueNet
from sppo_bench.core.critics import CriticStrategy
from sppo_bench.core.losses import AGGREGATIONS
from sppo_bench.core.ppo import PPOSettings
from sppo_bench.errors import UserError

BF16 = torch.bfloat16


def supported(net: StackedMLP) -> bool:
    """Whether ``net``'s activation has a hand-written derivative here (tanh, relu)."""
    return net.n_layers == 1 or isinstance(net.activation, nn.Tanh | nn.ReLU)


def _layer(net: StackedMLP, i: int) -> tuple[nn.Parameter, nn.Parameter]:
    return getattr(net, f"w{i}"), getattr(net, f"b{i}")


def _tanh(net: StackedMLP) -> bool:
    return isinstance(net.activation, nn.Tanh)


Layers = list[tuple[Tensor, Tensor]]  # per layer: its input a_i and the copy the matmuls read


def _low(x: Tensor, bf16: bool) -> Tensor:
    return x.to(BF16) if bf16 else x


def mlp_forward(net: StackedMLP, x: Tensor, bf16: bool = False) -> tuple[Tensor, Layers]:
    """``x [S, n, d]`` -> the output ``[S, n, o]`` and every layer's input a_i with its bf16 copy
    (the same tensor in fp32), for the backward. tanh(z) is computed as 2 sigmoid(2 z) - 1 (the
    factor 2 folded into the matmul, exactly): the same function to ~2e-7 and 3-4x faster than
    ``torch.tanh`` on this CPU."""
    inputs: Layers = []
    h = x
    for i in range(net.n_layers):
        w, b = _layer(net, i)
        inputs.append((h, _low(h, bf16)))
        last = i == net.n_layers - 1
        scale = 1.0 if last or not _tanh(net) else 2.0
        if bf16:
            h = torch.bmm(inputs[-1][1], w.to(BF16).transpose(1, 2)).float().add_(b.unsqueeze(1))
            h = h.mul_(scale) if scale != 1.0 else h
        else:
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2), beta=scale, alpha=scale)
        if not last:
            h = h.sigmoid_().mul_(2.0).sub_(1.0) if _tanh(net) else h.relu_()
    return h, inputs


def _accumulate(p: nn.Parameter, grad: Tensor) -> None:
    if p.grad is None:
        p.grad = grad
    else:
        p.grad.add_(grad)


def _weight_grad(g: Tensor, a: Tensor) -> Tensor:
    """g^T a ``[S, o, i]`` in fp32, with the smaller of o, i as the product's row count (a narrow
    first layer's g^T a runs ~6x faster as (a^T g)^T)."""
    if a.shape[-1] < g.shape[-1]:
        return torch.bmm(a.transpose(1, 2), g).float().transpose(1, 2).contiguous()
    return torch.bmm(g.transpose(1, 2), a).float()


def mlp_backward(net: StackedMLP, inputs: Layers, g: Tensor, bf16: bool = False) -> None:
    """Add dL/dW_i, dL/db_i to the parameters' ``.grad`` from ``g = dL/dz [S, n, o]`` of the last
    layer and the layers' ``inputs`` of ``mlp_forward`` (which are overwritten)."""
    for i in reversed(range(net.n_layers)):
        w, b = _layer(net, i)
        a, a_low = inputs[i]
        g_low = _low(g, bf16)
        _accumulate(w, _weight_grad(g_low, a_low))
        _accumulate(b, g.sum(dim=1))
        if i == 0:
            return
        g_a = torch.bmm(g_low, _low(w, bf16)).float()
        if _tanh(net):
            g = g_a.sub_(a.square_().mul_(g_a))  # (1 - a^2) g_a, in place
        else:
            g = g_a.mul_(a > 0)


def aggregation_weights(mask: Tensor, mode: str, counts: Tensor) -> Tensor:
    """w ``[S, b, t]`` with ``core.losses.aggregate(l, mask, mode, N_tok, N_seq)`` of seed s equal
    to sum_bt w_sbt l_sbt; ``counts`` ``[S, 2]`` holds each seed's (N_tok, N_seq)."""
    tokens, seqs = counts[:, 0].view(-1, 1, 1), counts[:, 1].view(-1, 1, 1)
    if mode == "token-mean":
        return mask / tokens
    if mode == "seq-mean-token-sum":
        return mask / seqs
    if mode == "seq-mean-token-mean":
        return mask / (mask.sum(dim=-1, keepdim=True).clamp_min(1.0) * seqs)
    raise UserError(f"unknown loss aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def _tie_split(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The shares of the gradient of max(x, y) that go to x and to y (autograd: half at ties)."""
    half = 0.5 * (x == y)
    return (x > y) + half, (x < y) + half


def policy_loss_grad(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    weights: Tensor,
    clip_eps: float,
    dual_clip: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``core.losses.clipped_policy_loss`` per seed and its gradient; all inputs ``[S, b, t]``.

    Returns the loss ``[S]``, approx_kl x tokens ``[S]``, clipfrac x tokens ``[S]`` and dL/dlog_pi
    ``[S, b, t]``: with r = exp(log_pi - old) (1 on padding) and l = max(-A r, -A clip(r)),
    dl/dr = -A on the unclipped side, -A 1[1 - eps <= r <= 1 + eps] on the clipped side; with the
    dual clip c (A < 0) l <- min(l, -A c), whose side -A c has no gradient; dL = w dl/dr r.
    """
    keep = mask.to(torch.bool)
    log_ratio = torch.where(keep, log_probs - old_log_probs, 0.0)
    ratio = torch.exp(log_ratio)
    clamped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    unclipped, clipped = -advantages * ratio, -advantages * clamped
    per_step = torch.maximum(unclipped, clipped)
    to_u, to_c = _tie_split(unclipped, clipped)
    inside = (ratio >= 1.0 - clip_eps) & (ratio <= 1.0 + clip_eps)
    d_ratio = -advantages * (to_u + to_c * inside)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise UserError(f"dual_clip must be > 1.0, got {dual_clip}")
        bound = -advantages * dual_clip
        negative = advantages < 0
        d_ratio = torch.where(negative, d_ratio * _tie_split(bound, per_step)[0], d_ratio)
        per_step = torch.where(negative, torch.minimum(per_step, bound), per_step)
    loss = (torch.where(keep, per_step, 0.0) * weights).sum(dim=(1, 2))
    grad = torch.where(keep, weights * d_ratio * ratio, 0.0)
    m = mask.to(ratio.dtype)
    kl = (((ratio - 1.0) - log_ratio) * m).sum(dim=(1, 2))
    clipfrac = (((ratio - 1.0).abs() > clip_eps).to(m.dtype) * m).sum(dim=(1, 2))
    return loss, kl, clipfrac, grad


def _log_softmax(out: Tensor) -> Tensor:
    """log softmax over the last axis, z - max z - log sum exp(z - max z): on a handful of actions
    ~10x faster than ``torch.log_softmax`` (whose per-row loop dominates there)."""
    shifted = out - out.amax(dim=-1, keepdim=True)
    return shifted.sub_(shifted.exp().sum(dim=-1, keepdim=True).log_())


def _head(policy: StackedPolicy, out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log pi(a|s), entropy, cache) of ``StackedPolicy.log_prob_entropy`` from its net's output
    ``out [S, n, a]``; the cache is log_softmax (discrete) or z = (a - mu) / sigma (Gaussian)."""
    if policy.discrete:
        log_p = _log_softmax(out)
        chosen = log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return chosen, -(log_p.exp() * log_p).sum(-1), log_p
    log_std = policy.log_std.unsqueeze(1).expand_as(out)  # [S, n, a]
    log_prob, entropy = gaussian_log_prob_entropy(out, actions, log_std)
    return log_prob, entropy, (actions - out) / log_std.exp()


def _head_backward(
    policy: StackedPolicy,
    cache: Tensor,
    actions: Tensor,
    entropy: Tensor,
    g_lp: Tensor,
    g_ent: Tensor | None,
) -> Tensor:
    """dL/dout ``[S, n, a]`` from dL/dlog_pi and dL/dentropy ``[S, n]``; adds dL/dlog_std.

    Categorical, p = softmax(out): dlog p_a/dout = onehot(a) - p, dH/dout = -p (log p + H).
    Gaussian: dlog pi/dmu = z / sigma, dlog pi/dlog_std = z^2 - 1, dH/dlog_std = 1.
    """
    if policy.discrete:
        log_p = cache
        p = log_p.exp()
        g = g_lp.unsqueeze(-1).expand_as(p).clone()
        if g_ent is not None:
            g.addcmul_(g_ent.unsqueeze(-1), log_p + entropy.unsqueeze(-1))
        g.mul_(-p).scatter_add_(-1, actions.unsqueeze(-1), g_lp.unsqueeze(-1))
        return g
    z = cache
    g_std = (g_lp.unsqueeze(-1) * (z.square() - 1.0)).sum(dim=1)
    if g_ent is not None:
        g_std = g_std + g_ent.sum(dim=1, keepdim=True)
    _accumulate(policy.log_std, g_std)
    return g_lp.unsqueeze(-1) * z / policy.log_std.exp().unsqueeze(1)


class _PolicyPass(NamedTuple):
    log_probs: Tensor  # [S, ...]
    entropy: Tensor  # [S, ...]
    head: Tensor  # _head's cache, rows flattened
    actions: Tensor  # rows flattened: [S, n] or [S, n, a]
    inputs: Layers  # mlp_forward's layer inputs


@torch.no_grad()
def log_prob_entropy(
    policy: StackedPolicy, obs: Tensor, actions: Tensor, bf16: bool = False
) -> _PolicyPass:
    """``StackedPolicy.log_prob_entropy`` on ``obs [S, ..., d]`` (the same numbers in fp32), with
    what the backward needs."""
    seeds, lead = obs.shape[0], obs.shape[1:-1]
    x = policy.normalize(obs).reshape(seeds, -1, obs.shape[-1])
    out, inputs = mlp_forward(policy.net, x, bf16)
    flat_actions = actions.reshape(seeds, -1, *actions.shape[len(lead) + 1 :])
    log_probs, entropy, cache = _head(policy, out, flat_actions)
    return _PolicyPass(
        log_probs.view(seeds, *lead), entropy.view(seeds, *lead), cache, flat_actions, inputs
    )


# Rows (of all seeds together) per forward + backward within a micro-batch: a 2x64 MLP's
# activations of ~400 rows per seed at 10 seeds stay in the L2 cache; measured (one core, 10 seeds,
# forward + backward) 53 GFLOP/s at 400 rows per seed, 45 at 800, 31 at 1600.
ROWS_PER_CHUNK = 4096


def _chunks(rows: int, seeds: int) -> list[slice]:
    """Slices of ``range(rows)`` (rows per seed) of about ``ROWS_PER_CHUNK`` rows of all seeds."""
    size = max(1, ROWS_PER_CHUNK // seeds)
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def _flat(x: Tensor, dims: int) -> Tensor:
    """``[S, b, T, ...]`` -> ``[S, b T, ...]`` where ``dims`` = 3 (the leading axes it has)."""
    return x.reshape(x.shape[0], -1, *x.shape[dims:])


@torch.no_grad()
def policy_step(
    policy: StackedPolicy,
    obs: Tensor,
    actions: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    counts: Tensor,
    cfg: PPOSettings,
    bf16: bool = False,
) -> Tensor:
    """One micro-batch of the policy phase: obs ``[S, b, T, d]``, actions ``[S, b, T(, a)]``,
    the rest ``[S, b, T]``. Adds the gradient of every seed's clipped surrogate minus
    ``entropy_coef`` x its aggregated entropy to ``.grad``; returns ``[4, S]``: loss, entropy term,
    approx_kl x tokens, clipfrac x tokens (``core.ppo.autograd_policy_step``'s metrics). Runs in
    chunks of rows (``ROWS_PER_CHUNK``); every per-step term is a sum over rows."""
    seeds = obs.shape[0]
    weights = _flat(aggregation_weights(mask, cfg.aggregation, counts), 3).unsqueeze(-1)
    obs, actions = _flat(obs, 3), _flat(actions, 3)
    old, adv, mask = (_flat(x, 3).unsqueeze(-1) for x in (old_log_probs, advantages, mask))
    totals = torch.zeros(4, seeds)
    for c in _chunks(obs.shape[1], seeds):
        fwd = log_prob_entropy(policy, obs[:, c], actions[:, c], bf16)
        w = weights[:, c]
        loss, kl, clipfrac, g_lp = policy_loss_grad(
            fwd.log_probs.unsqueeze(-1),
            old[:, c],
            adv[:, c],
            mask[:, c],
            w,
            cfg.clip_eps,
            cfg.dual_clip,
        )
        entropy = torch.where(mask[:, c, 0].to(torch.bool), fwd.entropy, 0.0)
        entropy_term = (entropy * w[..., 0]).sum(dim=1)
        g_ent = -cfg.entropy_coef * w[..., 0] if cfg.entropy_coef else None
        g_out = _head_backward(policy, fwd.head, fwd.actions, fwd.entropy, g_lp[..., 0], g_ent)
        mlp_backward(policy.net, fwd.inputs, g_out, bf16)
        totals += torch.stack([loss, entropy_term, kl, clipfrac])
    return totals


def critic_loss_grad(
    strategy: CriticStrategy,
    output: Tensor,
    old_output: Tensor | None,
    targets: Tensor,
    mask: Tensor,
    weights: Tensor | None,
    cfg: PPOSettings,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``strategy.loss`` per seed ``[S]`` and dL/doutput. Sequence critic: output ``[S, b]``,
    mean BCE is ``scale`` (row share / b) times the sum. Step critic: every tensor ``[S, b, T]``,
    ``weights`` from ``aggregation_weights``. BCE: dl/dv = sigmoid(v) - R. MSE:
    l = 0.5 max((V - G)^2, (V_c - G)^2), V_c = old + clamp(V - old, -c, c): dl/dV = (V - G) on the
    first side, (V_c - G) 1[|V - old| <= c] on the second."""
    targets = targets.to(output.dtype)
    if not strategy.per_step:
        loss = F.binary_cross_entropy_with_logits(output, targets, reduction="none").sum(1) * scale
        return loss, (torch.sigmoid(output) - targets) * scale
    keep = mask.to(torch.bool)
    if strategy.objective == "bce":
        per_step = F.binary_cross_entropy_with_logits(output, targets, reduction="none")
        d_out = torch.sigmoid(output) - targets
    else:
        error = output - targets
        per_step = 0.5 * error.square()
        d_out = error
        if cfg.value_clip is not None:
            change = output - old_output
            error_c = old_output + torch.clamp(change, -cfg.value_clip, cfg.value_clip) - targets
            to_u, to_c = _tie_split(per_step, 0.5 * error_c.square())
            d_out = to_u * error + to_c * error_c * (change.abs() <= cfg.value_clip)
            per_step = torch.maximum(per_step, 0.5 * error_c.square())
    loss = (torch.where(keep, per_step, 0.0) * weights).sum(dim=(1, 2))
    return loss, torch.where(keep, weights * d_out, 0.0)


@torch.no_grad()
def critic_output(
    critic: StackedValueNet, states: Tensor, bf16: bool = False
) -> tuple[Tensor, Layers]:
    """``StackedValueNet`` on ``states [S, ..., d]``: its output ``[S, ...]`` (the same numbers in
    fp32) and the layer inputs for the backward."""
    seeds, lead = states.shape[0], states.shape[1:-1]
    x = critic.normalize(states).reshape(seeds, -1, states.shape[-1])
    out, inputs = mlp_forward(critic.net, x, bf16)
    return out.view(seeds, *lead), inputs


@torch.no_grad()
def critic_step(
    critic: StackedValueNet,
    strategy: CriticStrategy,
    states: Tensor,
    old_output: Tensor | None,
    targets: Tensor,
    mask: Tensor,
    counts: Tensor,
    cfg: PPOSettings,
    row_share: float,
    bf16: bool = False,
) -> Tensor:
    """One micro-batch of the critic phase on the critic's ``states`` ``[S, b(, T), d]``: adds
    each seed's loss gradient to ``.grad`` and returns the losses ``[S]`` (a step critic in chunks
    of rows, as ``policy_step``)."""
    seeds = states.shape[0]
    if not strategy.per_step:
        output, inputs = critic_output(critic, states, bf16)
        scale = row_share / output.shape[1]
        loss, grad = critic_loss_grad(strategy, output, None, targets, mask, None, cfg, scale)
        mlp_backward(critic.net, inputs, grad.unsqueeze(-1), bf16)
        return loss
    weights = _flat(aggregation_weights(mask, cfg.aggregation, counts), 3).unsqueeze(-1)
    states = _flat(states, 3)
    old = None if old_output is None else _flat(old_output, 3).unsqueeze(-1)
    targets, mask = (_flat(x, 3).unsqueeze(-1) for x in (targets, mask))
    total = torch.zeros(seeds)
    for c in _chunks(states.shape[1], seeds):
        output, inputs = critic_output(critic, states[:, c], bf16)
        loss, grad = critic_loss_grad(
            strategy,
            output.unsqueeze(-1),
            None if old is None else old[:, c],
            targets[:, c],
            mask[:, c],
            weights[:, c],
            cfg,
        )
        mlp_backward(critic.net, inputs, grad, bf16)
        total += loss
    return total
