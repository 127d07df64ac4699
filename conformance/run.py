"""``make conformance``: circuitd against its peers on the same seeded random model and task.

1. Writes the fixture (:mod:`conformance.circuitd_edges`): a ``random:`` preset's config and
   weights as a ``local:`` checkpoint, a clean/corrupted task in token ids, circuitd's logits.
2. circuitd's EAP and ACDC: values at float64, timed at float32.
3. auto-circuit's (:mod:`conformance.peers_autocircuit`, in ``.venv-peers``): the same, after
   checking its logits equal circuitd's to 1e-5; ACDC visits edges in circuitd's order.
4. Compares (:mod:`conformance.compare`): every EAP score equal to 1e-4 relative (float64),
   ACDC's kept edges identical (float64, and the timed float32 runs); the attribution side
   is ``conformance/attribution_check.py``'s.
5. Prints each check, then one line of time ratios, circuitd / peer, measured in this run
   with the same thread count on both sides::

       eap_vs_autocircuit=X acdc_vs_autocircuit=Y attribution_vs_circuittracer=Z

Exits 1 when a comparison fails (or the attribution check is missing), 2 when a side
cannot run.

    .venv/bin/python conformance/run.py [--threads 1] [--repeats 5] [--tau 0.01]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root holds the conformance package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from circuitd.errors import CircuitdError  # noqa: E402
from conformance.autocircuit_names import edge_to_autocircuit, edge_to_circuitd  # noqa: E402
from conformance.circuitd_edges import (  # noqa: E402
    Fixture,
    MethodRun,
    acdc_visit_order,
    make_fixture,
    run_method,
    spec_for,
)
from conformance.compare import AUTOCIRCUIT_SIGN, Check, compare_eap, compare_kept  # noqa: E402

EAP_RTOL = 1e-4
ATTRIBUTION_SCRIPT = ROOT / "conformance" / "attribution_check.py"


class Unrunnable(Exception):
    """A side could not run: one line, exit status 2."""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def circuitd_side(fixture: Fixture, tau: float, repeats: int) -> dict[str, dict[str, MethodRun]]:
    """EAP and ACDC per dtype: float64 once (the values), float32 timed."""
    out: dict[str, dict[str, MethodRun]] = {}
    for dtype, reps in (("float64", 0), ("float32", repeats)):
        out[dtype] = {
            "eap": run_method(spec_for(fixture, "eap", {}, dtype), reps),
            "acdc": run_method(spec_for(fixture, "acdc", {"tau": [tau], "acdc_metric": "kl"}, dtype), reps),
        }
    return out


def autocircuit_side(
    python: Path, fixture: Fixture, tau: float, threads: int, repeats: int
) -> dict[str, Any]:
    """Run :mod:`conformance.peers_autocircuit` in the peers' venv; its results by circuitd's names."""
    cmd = [str(python), str(ROOT / "conformance" / "peers_autocircuit.py"), "--work", str(fixture.work),
           "--tau", repr(tau), "--threads", str(threads), "--repeats", str(repeats)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise Unrunnable(_last_line(proc.stderr or proc.stdout))
    raw = json.loads((fixture.work / "autocircuit.json").read_text())
    if raw["threads"] != threads:
        raise Unrunnable(f"auto-circuit side ran with {raw['threads']} threads, not {threads}")
    for side in ("float32", "float64"):
        res = raw[side]
        res["eap"] = {edge_to_circuitd(k): v for k, v in res["eap"].items()}
        for key in ("acdc_kept", "acdc_kept_own_order"):
            if key in res:
                res[key] = {edge_to_circuitd(k) for k in res[key]}
    return raw


def attribution_side(work: Path, threads: int, repeats: int, peers: Path) -> tuple[Check, float]:
    """``conformance/attribution_check.py``'s verdict: its last stdout line is
    ``{"ok": bool, "ratio": float, "detail": str}``."""
    name = "attribution_vs_circuittracer"
    if not ATTRIBUTION_SCRIPT.is_file():
        return Check(name, False, f"{ATTRIBUTION_SCRIPT.relative_to(ROOT)} is missing"), math.nan
    work.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, str(ATTRIBUTION_SCRIPT), "--work", str(work), "--threads", str(threads),
        "--repeats", str(repeats), "--peers-python", str(peers / "bin" / "python"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        verdict = json.loads(_last_line(proc.stdout))
        ok, ratio, detail = bool(verdict["ok"]), float(verdict["ratio"]), str(verdict["detail"])
    except (ValueError, KeyError, TypeError):
        reason = _last_line(proc.stderr or proc.stdout)
        return Check(name, False, f"no verdict (exit {proc.returncode}): {reason}"), math.nan
    return Check(name, ok and proc.returncode == 0, detail), ratio


def edge_checks(
    ours: dict[str, dict[str, MethodRun]], peer: dict[str, Any], tau: float
) -> tuple[list[Check], list[str]]:
    """The required comparisons (EAP at float64; ACDC at float64 and in the timed float32
    runs), and information lines: float32 EAP (its rounding is absolute, so its error is given
    relative to the largest score) and auto-circuit's own ACDC order."""
    checks, info = [], []
    for dtype in ("float64", "float32"):
        mine, theirs = ours[dtype], peer[dtype]
        eap, acdc = mine["eap"], mine["acdc"]
        if dtype == "float64":
            checks.append(compare_eap(f"eap_vs_autocircuit {dtype}", eap.scores, theirs["eap"], EAP_RTOL))
        else:
            largest = max(abs(v) for v in eap.scores.values())
            diff = max(abs(v - AUTOCIRCUIT_SIGN * theirs["eap"][e]) for e, v in eap.scores.items())
            info.append(f"info: eap float32 (timed runs): largest difference {diff / largest:.1e} "
                        f"of the largest |score| ({largest:.3g})")
        name = f"acdc_vs_autocircuit {dtype} (same order)"
        checks.append(compare_kept(name, acdc.keep, theirs["acdc_kept"], acdc.scores, tau))
    acdc64 = ours["float64"]["acdc"]
    own = compare_kept(
        "auto-circuit's own order", acdc64.keep, peer["float64"]["acdc_kept_own_order"], acdc64.scores, tau
    )
    info.append(f"info: acdc float64 in auto-circuit's own order (hash order within a layer): {own.summary}")
    info += [f"    {d} (tested against another circuit)" for d in own.details]
    return checks, info


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "conformance")
    ap.add_argument("--peers", type=Path, default=ROOT / ".venv-peers", help="the peers' venv")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs after a warm-up (median)")
    ap.add_argument("--model", default="random:tiny@1", help="the model copied into the fixture")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--length", type=int, default=10, help="tokens per prompt")
    ap.add_argument("--changed", type=int, default=2, help="tokens the corrupted prompts change")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tau", type=float, default=0.01)
    args = ap.parse_args()
    for name in ("threads", "repeats", "prompts", "length"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: must be at least 1")
    if not 1 <= args.changed < args.length:
        ap.error(f"--changed: must be from 1 to --length - 1 ({args.length - 1}); the first token stays")
    if not (args.tau > 0 and math.isfinite(args.tau)):
        ap.error("--tau: must be a positive number")
    python = args.peers / "bin" / "python"
    if not python.is_file():
        print(f"conformance: {python}: missing; `make conformance` builds the peers' venv", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    work: Path = args.work
    try:
        work.mkdir(parents=True, exist_ok=True)
        fixture = make_fixture(work, args.model, args.prompts, args.length, args.changed, args.seed)
        order = [edge_to_autocircuit(e) for e in acdc_visit_order(fixture)]
        (work / "acdc_order.json").write_text(json.dumps(order))
        ours = circuitd_side(fixture, args.tau, args.repeats)
        peer = autocircuit_side(python, fixture, args.tau, args.threads, args.repeats)
    except (Unrunnable, CircuitdError, OSError) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        sys.exit(2)
    checks, info = edge_checks(ours, peer, args.tau)
    attribution, attribution_ratio = attribution_side(
        work / "attribution", args.threads, args.repeats, args.peers
    )
    checks.append(attribution)
    f32, p32 = ours["float32"], peer["float32"]
    print(f"model {args.model}: {peer['float64']['n_edges']} edges, {args.prompts} prompts of {args.length} "
          f"tokens; logits vs TL 2.18: float32 {p32['logits_max_abs_diff']:.2g}, "
          f"float64 {peer['float64']['logits_max_abs_diff']:.2g}; threads {args.threads}")
    for c in checks:
        print(f"{c.name}: {'ok' if c.ok else 'FAIL'}: {c.summary}")
        for d in c.details:
            print(f"    {d}")
    for line in info:
        print(line)
    seconds = {m: (f32[m].seconds, p32["seconds"][m]) for m in ("eap", "acdc")}
    for m, (mine, theirs) in seconds.items():
        print(f"{m} seconds (float32, median of {args.repeats}): circuitd {mine:.4f}, "
              f"auto-circuit {theirs:.4f}")
    print(f"eap_vs_autocircuit={seconds['eap'][0] / seconds['eap'][1]:.3g} "
          f"acdc_vs_autocircuit={seconds['acdc'][0] / seconds['acdc'][1]:.3g} "
          f"attribution_vs_circuittracer={attribution_ratio:.3g}")
    sys.exit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    main()
