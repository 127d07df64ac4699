"""The comparisons of the conformance run, on plain dicts keyed by circuitd's edge names (the
peer's names already mapped, :mod:`conformance.autocircuit_names`). Pure Python.

EAP: circuitd's score is ``d metric / d alpha`` (alpha = 1 carries the corrupted source), with
``metric`` the task's logit difference; auto-circuit's is the gradient of its loss
``-mean logit diff`` with respect to the same mask, so ``circuitd = -auto-circuit`` on every
edge, and ``|score|`` ranks edges alike on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AUTOCIRCUIT_SIGN = -1.0  # circuitd's EAP score = AUTOCIRCUIT_SIGN * auto-circuit's


@dataclass
class Check:
    """One comparison: passed or not, a one-line summary, and the lines that explain it."""

    name: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)


def _same_edges(name: str, ours: set[str], theirs: set[str]) -> Check | None:
    if ours == theirs:
        return None
    lacking, extra = sorted(ours - theirs), sorted(theirs - ours)
    return Check(name, False, f"edge sets differ: peer lacks {lacking[:3]}, has extra {extra[:3]}")


def relative_error(a: float, b: float, floor: float = 0.0) -> float:
    """``|a - b| / max(|a|, |b|, floor)``; 0 when that is 0."""
    scale = max(abs(a), abs(b), floor)
    return 0.0 if scale == 0 else abs(a - b) / scale


def compare_eap(
    name: str, ours: dict[str, float], peer: dict[str, float], rtol: float, floor: float = 0.0,
    sign: float = AUTOCIRCUIT_SIGN,
) -> Check:
    """Every edge's score equal to ``rtol`` relative, after ``sign`` (the peer's convention);
    ``floor``: relative to at least this much (float32 rounding is absolute near zero)."""
    mismatch = _same_edges(name, set(ours), set(peer))
    if mismatch:
        return mismatch
    errors = {e: relative_error(ours[e], sign * peer[e], floor) for e in ours}
    worst = max(errors, key=lambda e: errors[e])
    bad = sorted((e for e in errors if not errors[e] <= rtol), key=lambda e: -errors[e])
    summary = (
        f"{len(ours)} edges, largest relative error {errors[worst]:.2e} at {worst} "
        f"(circuitd {ours[worst]:.6g}, auto-circuit {peer[worst]:.6g}); tolerance {rtol:g}"
        + (f" of at least {floor:.3g}" if floor else "")
    )
    details = [
        f"{e}: circuitd {ours[e]:.6g}, auto-circuit {peer[e]:.6g}, rel {errors[e]:.2e}" for e in bad[:10]
    ]
    return Check(name, not bad, summary, details)


def compare_kept(
    name: str, ours: dict[str, bool], peer_kept: set[str], effects: dict[str, float], tau: float
) -> Check:
    """Identical circuits; each edge that differs is listed with circuitd's measured effect
    (``m(H - e) - m(H)`` when tested; 0 untested) against tau."""
    unknown = peer_kept - set(ours)
    if unknown:
        return Check(name, False, f"peer keeps edges circuitd does not have: {sorted(unknown)[:3]}")
    kept = {e for e, k in ours.items() if k}
    differ = sorted(kept ^ peer_kept)
    details = []
    for e in differ:
        side = "circuitd only" if e in kept else "auto-circuit only"
        details.append(f"{e}: kept by {side}; circuitd's effect {effects[e]:.6g} vs tau {tau:g}")
    summary = (
        f"{len(kept)} of {len(ours)} edges kept by circuitd, {len(peer_kept)} by auto-circuit, "
        f"{len(differ)} differ"
    )
    trivial = not 0 < len(kept) < len(ours)  # all or nothing kept: tau tested no decision
    if trivial:
        summary += "; tau keeps all or none of the edges, so the comparison tests nothing: choose another tau"
    return Check(name, not differ and not trivial, summary, details)
