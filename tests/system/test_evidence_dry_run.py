"""The GPU evidence command's CPU dry run (benchmarks/evidence.py via gpu_run.sh): every stage on a tiny
random model, so a typo, a missing import or a wrong flag fails here and not on a lent GPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _plot import svg_lines  # noqa: E402


@pytest.mark.slow
def test_evidence_dry_run_runs_every_stage(tmp_path):
    out = tmp_path / "out"
    # gpu_run.sh calls python3: this interpreter's, with the package and its dependencies.
    env = dict(os.environ, OUT=str(out), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               HYBRIDLLM_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "evidence", "--dry-run", "--model-dir",
                           str(tmp_path / "model")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    report = (out / "evidence.md").read_text()
    for stage in ("tests", "profile", "step", "neo_step", "neo", "flex"):
        assert f"| {stage} | ok |" in report, report
    # Each table has its rows: step per batch, NEO per rate, FlexInfer per policy and batch.
    step = (out / "step.md").read_text()
    assert "| 4 |" in step and "profile's prediction" in step, step
    assert "| torch | 4 x 2 |" in (out / "neo_step.md").read_text()
    neo = (out / "neo.md").read_text()
    assert neo.count("\n| ") >= 1 + 3 and "NEO steps with host decodes" in neo, neo
    flex = (out / "flex.md").read_text()
    for policy in ("auto", "gpu_offload", "cpu_only"):
        assert f"| {policy} | 2 |" in flex, flex
    assert (out / "neo.png").stat().st_size > 1000
    assert (out / "profile.json").is_file()
    # The random weights were drawn in memory: the recipe folder holds no weights.
    assert not list((tmp_path / "model").glob("*.safetensors"))


def test_svg_plot_has_a_line_and_a_point_per_rate():
    svg = svg_lines({"gpu_only": [(100.0, 20.0, "1/s"), (180.0, 35.0, "2/s")], "NEO": [(120.0, 18.0, "1/s")]},
                    "tok/s", "ms/token", "title <a & b>")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and svg.count("<circle") == 3
    assert "title &lt;a &amp; b&gt;" in svg
