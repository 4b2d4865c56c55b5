"""A latency table without profiling, for tests of what uses one (the table's key, the budget search)."""

from __future__ import annotations

import reports.layer_latency as ll


def fake_flat_profile(monkeypatch) -> list[int]:
    """Replace profiling with a one-point table per conv (0.01 ms at full width); returns the list that gets one
    entry per table built, so a test can count rebuilds."""
    built: list[int] = []

    def fake_profile(m, imgsz, threads, round_to, calibration=None, **kw):
        built.append(1)
        specs = ll.conv_specs(m, imgsz)
        layers = {n: ll.LayerTable([s.cin], [s.cout], [[0.01]], s.out_hw) for n, s in specs.items()}
        return ll.LatencyTable(ll.table_key(specs, imgsz, threads, round_to), layers, rest_a=0.5)

    monkeypatch.setattr(ll, "profile_model", fake_profile)
    return built
