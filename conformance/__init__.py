"""Conformance with the peer tools (auto-circuit, circuit-tracer): ``make conformance``.

The peers pin TransformerLens 2.x, so they run in their own virtual environment
(``.venv-peers``) and talk to circuitd's side through files; see the root README.
"""
