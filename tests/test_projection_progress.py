"""The map job's progress line advances with the work (issue 17): "Compute the map" stayed on
"read snapshot of epoch 0" for the whole minute of a UMAP fit, because the throttle that keeps
job.json writes to a few a second dropped the message that starts the long step."""

from __future__ import annotations

import poisonlens.projection as projection
from poisonlens.store import RunWriter


def test_the_message_that_starts_a_long_step_reaches_the_job_file(tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    RunWriter(run_dir).create("r", {"defense": "none"}, {}, class_names=[], target=None)
    seen = []

    def fake_compute(run_dir, *, method, max_fit, progress, **options):  # placement, device
        for i, epoch in enumerate((0, 2, 4)):  # reading is quick: these come within 0.3 s
            progress(0.05 * (i + 1) / 3, f"read snapshot of epoch {epoch}")
        progress(0.05, "fitting a UMAP layout on 1,000 gradient rows")
        seen.append(projection.read_job(run_dir, method)["message"])  # while the fit runs

    monkeypatch.setattr(projection, "compute_projection", fake_compute)
    assert projection._job_main([str(run_dir), "--method", "umap"]) == 0
    assert seen == ["fitting a UMAP layout on 1,000 gradient rows"]
