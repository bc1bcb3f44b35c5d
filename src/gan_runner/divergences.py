"""The f-divergences of f-GAN (Nowozin, Cseke & Tomioka 2016, "f-GAN: Training Generative Neural
Samplers using Variational Divergence Minimization", NeurIPS, arXiv:1606.00709, Table 2).

D_f(P‖Q) = ∫ q f(p/q) dx, P the data and Q the model. Fenchel duality gives the lower bound

    D_f(P‖Q) ≥ sup_T E_P[T(x)] − E_Q[f*(T(x))],   tight at T*(x) = f′(p(x)/q(x)),

and a critic with raw output v reaches T = g_f(v) through the output activation g_f, which keeps
T inside the domain of the conjugate f*. Each row below gives f, g_f, f*, the composite
f*(g_f(v)) in a numerically stable closed form, and, where f′ has a closed-form inverse,
log p/q read off the optimal critic's raw output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LOG2 = math.log(2.0)
INF = math.inf

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Divergence:
    """One f-divergence of f-GAN's Table 2: its generator function, activation and conjugate."""

    name: str
    f: Fn  # the convex generator, f(1) = 0, for u = p/q > 0
    activation: Fn  # g_f: raw critic output v -> T = g_f(v) in dom f*
    conjugate: Fn  # f*(t) = sup_u {tu − f(u)}; +inf outside its domain
    conjugate_of_activation: Fn  # f*(g_f(v)), written so that it neither overflows nor cancels
    equals: str  # what ∫ q f(p/q) is, in the usual names
    f_at_zero: float  # f(0+): where p = 0 < q the integrand is q·f(0+)
    slope_at_infinity: float  # lim f(u)/u as u → ∞: where q = 0 < p the integrand is p·this
    log_ratio: Fn | None = None  # log p/q at the optimal critic's raw output v, where f′ inverts


def _outside(t: Tensor, inside: Tensor, value: Tensor) -> Tensor:
    """The conjugate's formula inside its domain, +inf outside (a sup over u that diverges)."""
    return torch.where(inside, value, torch.full_like(t, INF))


def _log_lambert_w_of_exp(log_y: Tensor) -> Tensor:
    """s = log W(e^L) for L = log_y, the root of e^s + s = L, by Newton in log space.

    In log space neither e^L nor W overflows. h(s) = e^s + s − L is convex and increasing, so
    Newton converges from any start; these starts are within a step of the root at both ends
    (W(y) ≈ y for small y, W(y) ≈ L − log L for large y): four steps already reach float64
    precision for every |L| ≤ 200 (measured), eight leave a margin. No graph: the caller adds
    the derivative.
    """
    with torch.no_grad():
        target = log_y.double()
        large = target.clamp(min=1)  # where L > 1: W ≈ L − log L, which is >= 1
        s = torch.where(target > 1, (large - large.log()).log(), target - 1)
        for _ in range(8):
            w = s.exp()
            s = s - (w + s - target) / (w + 1)
    return s.to(log_y.dtype)


def _jeffrey_conjugate(t: Tensor) -> Tensor:
    # f*(t) = W(e^{1−t}) + 1/W(e^{1−t}) + t − 2. One Newton step taken with the graph from the
    # converged (detached) root leaves the value where it is and gives ds/dL = 1/(1 + W), the
    # implicit-function derivative, so autograd returns f*′(t) = 1/W(e^{1−t}) = u*(t).
    level = 1 - t
    root = _log_lambert_w_of_exp(level)
    w_root = root.exp()
    s = root - (w_root + root - level) / (w_root + 1)
    return s.exp() + (-s).exp() + t - 2


def _jeffrey_log_ratio(v: Tensor) -> Tensor:
    # f′(u) = log u + 1 − 1/u = v  ⇔  u = 1/W(e^{1−v})
    return -_log_lambert_w_of_exp(1 - v)


def _xlogx(u: Tensor) -> Tensor:
    return torch.xlogy(u, u)


DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        # f = u log u;  g = v;  f*(t) = e^{t−1};  T* = 1 + log u
        Divergence(
            "kl",
            f=_xlogx,
            activation=lambda v: v,
            conjugate=lambda t: torch.exp(t - 1),
            conjugate_of_activation=lambda v: torch.exp(v - 1),
            equals="KL(P‖Q)",
            f_at_zero=0.0,
            slope_at_infinity=INF,
            log_ratio=lambda v: v - 1,
        ),
        # f = −log u;  g = −e^{−v};  f*(t) = −1 − log(−t), t < 0;  f*(g(v)) = v − 1;  T* = −q/p
        Divergence(
            "reverse_kl",
            f=lambda u: -torch.log(u),
            activation=lambda v: -torch.exp(-v),
            conjugate=lambda t: _outside(t, t < 0, -1 - torch.log(-t)),
            conjugate_of_activation=lambda v: v - 1,
            equals="KL(Q‖P)",
            f_at_zero=INF,
            slope_at_infinity=0.0,
            log_ratio=lambda v: v,
        ),
        # f = (u − 1)²;  g = v;  f*(t) = t²/4 + t;  T* = 2(u − 1), so u = 1 + v/2 (> 0 at T*)
        Divergence(
            "pearson",
            f=lambda u: (u - 1) ** 2,
            activation=lambda v: v,
            conjugate=lambda t: t * t / 4 + t,
            conjugate_of_activation=lambda v: v * v / 4 + v,
            equals="Pearson χ²(P‖Q) = ∫(p − q)²/q",
            f_at_zero=1.0,
            slope_at_infinity=INF,
            log_ratio=lambda v: torch.log((1 + v / 2).clamp(min=torch.finfo(v.dtype).tiny)),
        ),
        # f = (1 − u)²/u;  g = 1 − e^{−v};  f*(t) = 2 − 2√(1 − t), t < 1;
        # f*(g(v)) = 2 − 2e^{−v/2};  T* = 1 − 1/u², so u = e^{v/2}
        Divergence(
            "neyman",
            f=lambda u: (1 - u) ** 2 / u,
            activation=lambda v: -torch.expm1(-v),
            conjugate=lambda t: _outside(t, t < 1, 2 - 2 * torch.sqrt(1 - t)),
            conjugate_of_activation=lambda v: 2 - 2 * torch.exp(-v / 2),
            equals="Neyman χ²(P‖Q) = ∫(p − q)²/p",
            f_at_zero=INF,
            slope_at_infinity=1.0,
            log_ratio=lambda v: v / 2,
        ),
        # f = (√u − 1)²;  g = 1 − e^{−v};  f*(t) = t/(1 − t), t < 1;  f*(g(v)) = e^v − 1;
        # T* = 1 − 1/√u, so u = e^{2v}
        Divergence(
            "hellinger",
            f=lambda u: (torch.sqrt(u) - 1) ** 2,
            activation=lambda v: -torch.expm1(-v),
            conjugate=lambda t: _outside(t, t < 1, t / (1 - t)),
            conjugate_of_activation=torch.expm1,
            equals="squared Hellinger ∫(√p − √q)² = 2(1 − BC(P, Q))",
            f_at_zero=1.0,
            slope_at_infinity=1.0,
            log_ratio=lambda v: 2 * v,
        ),
        # f = (u − 1) log u;  g = v;  f*(t) = W(e^{1−t}) + 1/W(e^{1−t}) + t − 2 (W: Lambert's);
        # T* = log u + 1 − 1/u, so u = 1/W(e^{1−v})
        Divergence(
            "jeffrey",
            f=lambda u: (u - 1) * torch.log(u),
            activation=lambda v: v,
            conjugate=_jeffrey_conjugate,
            conjugate_of_activation=_jeffrey_conjugate,
            equals="KL(P‖Q) + KL(Q‖P)",
            f_at_zero=INF,
            slope_at_infinity=INF,
            log_ratio=_jeffrey_log_ratio,
        ),
        # f = −(u + 1) log((1 + u)/2) + u log u;  g = log 2 − log(1 + e^{−v});
        # f*(t) = −log(2 − e^t), t < log 2;  f*(g(v)) = softplus(v) − log 2;  T* = log(2u/(1 + u))
        Divergence(
            "jensen_shannon",
            f=lambda u: _xlogx(u) - torch.xlogy(u + 1, (u + 1) / 2),
            activation=lambda v: LOG2 - F.softplus(-v),
            conjugate=lambda t: _outside(t, t < LOG2, -torch.log(2 - torch.exp(t))),
            conjugate_of_activation=lambda v: F.softplus(v) - LOG2,
            equals="2·JSD(P‖Q) = KL(P‖M) + KL(Q‖M), M = (P + Q)/2",
            f_at_zero=LOG2,
            slope_at_infinity=LOG2,
            log_ratio=lambda v: v,
        ),
        # f = u log u − (u + 1) log(u + 1);  g = log σ(v);  f*(t) = −log(1 − e^t), t < 0;
        # f*(g(v)) = softplus(v);  T* = log(u/(1 + u)): the critic is Goodfellow's D = σ(v)
        Divergence(
            "gan",
            f=lambda u: _xlogx(u) - _xlogx(u + 1),
            activation=lambda v: -F.softplus(-v),
            conjugate=lambda t: _outside(t, t < 0, -torch.log(-torch.expm1(t))),
            conjugate_of_activation=F.softplus,
            equals="2·JSD(P‖Q) − log 4",
            f_at_zero=0.0,
            slope_at_infinity=0.0,
            log_ratio=lambda v: v,
        ),
        # f = ½|u − 1|;  g = ½ tanh(v);  f*(t) = t, |t| ≤ ½;  T* = ½ sign(u − 1): no inverse
        Divergence(
            "total_variation",
            f=lambda u: 0.5 * torch.abs(u - 1),
            activation=lambda v: 0.5 * torch.tanh(v),
            conjugate=lambda t: _outside(t, t.abs() <= 0.5, t),
            conjugate_of_activation=lambda v: 0.5 * torch.tanh(v),
            equals="total variation ½∫|p − q|",
            f_at_zero=0.5,
            slope_at_infinity=0.5,
        ),
    )
}


def divergence(name: str) -> Divergence:
    """The divergence called `name`, or a ValueError listing the choices."""
    if name not in DIVERGENCES:
        raise ValueError(
            f"divergence={name!r} is not an f-divergence here; choose one of "
            f"{', '.join(DIVERGENCES)}"
        )
    return DIVERGENCES[name]


def _float64(values: Any) -> Tensor:
    if torch.is_tensor(values):
        return values.detach().cpu().double()
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def quadrature_divergence(name: str, p: Any, q: Any, x: Any) -> float:
    """∫ q f(p/q) dx by the trapezoid rule on the grid x, given both densities on it.

    Where q = 0 < p the integrand is p·lim f(u)/u, where p = 0 < q it is q·f(0+): math.inf when
    that limit is infinite (KL where the model has no mass, reverse KL where the data has none).
    """
    div = divergence(name)
    p, q, x = _float64(p), _float64(q), _float64(x)
    if (p < 0).any() or (q < 0).any():
        raise ValueError("densities must be non-negative")
    both = (p > 0) & (q > 0)
    only_p, only_q = (p > 0) & (q == 0), (q > 0) & (p == 0)
    if (only_p.any() and math.isinf(div.slope_at_infinity)) or (
        only_q.any() and math.isinf(div.f_at_zero)
    ):
        return INF
    ratio = torch.where(both, p / torch.where(both, q, 1.0), 1.0)
    integrand = torch.where(both, q * div.f(ratio), 0.0)
    integrand = integrand + torch.where(only_p, p * div.slope_at_infinity, 0.0)
    integrand = integrand + torch.where(only_q, q * div.f_at_zero, 0.0)
    return float(torch.trapezoid(integrand, x))


def _gaussian_kl(m1: float, s1: float, m2: float, s2: float) -> float:
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def _renyi_integral(a: float, m1: float, s1: float, m2: float, s2: float) -> float:
    """R_a = ∫ p^a q^{1−a}: finite iff d = a σ2² + (1 − a) σ1² > 0."""
    d = a * s2**2 + (1 - a) * s1**2
    if d <= 0:
        return INF
    return s1 ** (1 - a) * s2**a / math.sqrt(d) * math.exp(-a * (1 - a) * (m1 - m2) ** 2 / (2 * d))


def _normal_cdf(x: float, m: float, s: float) -> float:
    return 0.5 * math.erfc(-(x - m) / (s * math.sqrt(2.0)))


def _gaussian_total_variation(m1: float, s1: float, m2: float, s2: float) -> float:
    # log p = log q is a x² + b x + c = 0; between consecutive roots one density dominates.
    a = 0.5 / s2**2 - 0.5 / s1**2
    b = m1 / s1**2 - m2 / s2**2
    c = m2**2 / (2 * s2**2) - m1**2 / (2 * s1**2) + math.log(s2 / s1)
    if a == 0:
        roots = [] if b == 0 else [-c / b]
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            roots = []
        else:  # the stable pair of quadratic roots
            h = -0.5 * (b + math.copysign(math.sqrt(disc), b))
            roots = sorted({h / a, c / h} if h != 0 else {0.0})
    edges = [-INF, *roots, INF]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mass_p = _normal_cdf(hi, m1, s1) - _normal_cdf(lo, m1, s1)
        mass_q = _normal_cdf(hi, m2, s2) - _normal_cdf(lo, m2, s2)
        total += abs(mass_p - mass_q)
    return 0.5 * total


# Closed forms between P = N(m1, s1²) and Q = N(m2, s2²) (zoo-games.md §5.3).
GAUSSIAN_CLOSED_FORMS: dict[str, Callable[[float, float, float, float], float]] = {
    "kl": _gaussian_kl,
    "reverse_kl": lambda m1, s1, m2, s2: _gaussian_kl(m2, s2, m1, s1),
    "jeffrey": lambda m1, s1, m2, s2: _gaussian_kl(m1, s1, m2, s2) + _gaussian_kl(m2, s2, m1, s1),
    "hellinger": lambda *ms: 2 * (1 - _renyi_integral(0.5, *ms)),
    "pearson": lambda *ms: _renyi_integral(2.0, *ms) - 1,  # finite iff 2σ2² > σ1²
    "neyman": lambda *ms: _renyi_integral(-1.0, *ms) - 1,  # finite iff 2σ1² > σ2²
    "total_variation": _gaussian_total_variation,
}


def gaussian_pdf(x: Tensor, mean: float, std: float) -> Tensor:
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def gaussian_divergence(
    name: str, p: tuple[float, float], q: tuple[float, float], points: int = 20_001
) -> float:
    """D_f(N(μ1, σ1²) ‖ N(μ2, σ2²)): closed form where one exists (math.inf where the integral
    diverges), else the trapezoid rule on μ ± 12σ of both (Jensen-Shannon, GAN)."""
    (m1, s1), (m2, s2) = (tuple(map(float, p)), tuple(map(float, q)))
    divergence(name)
    if s1 <= 0 or s2 <= 0:
        raise ValueError(f"standard deviations must be > 0, got {s1} and {s2}")
    if name in GAUSSIAN_CLOSED_FORMS:
        return float(GAUSSIAN_CLOSED_FORMS[name](m1, s1, m2, s2))
    lo, hi = min(m1 - 12 * s1, m2 - 12 * s2), max(m1 + 12 * s1, m2 + 12 * s2)
    x = torch.linspace(lo, hi, points, dtype=torch.float64)
    return quadrature_divergence(name, gaussian_pdf(x, m1, s1), gaussian_pdf(x, m2, s2), x)


def bound_on_grid(name: str, v: Any, p: Any, q: Any, x: Any) -> float:
    """∫ p·g_f(V) − q·f*(g_f(V)) dx: the variational lower bound of a critic whose raw outputs
    on the grid x are v, by the trapezoid rule (no Monte-Carlo noise)."""
    div = divergence(name)
    v, p, q, x = _float64(v), _float64(p), _float64(q), _float64(x)
    real = torch.where(p > 0, p * div.activation(v), 0.0)
    fake = torch.where(q > 0, q * div.conjugate_of_activation(v), 0.0)
    return float(torch.trapezoid(real - fake, x))
