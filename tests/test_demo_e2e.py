"""End to end: `leader demo` through the CLI on phantoms and on the real pack (tiny schedules).

These are the slow tests (about a minute each on 2 CPU cores); `make test-fast` leaves them out.
"""

import json
import math
import os

import pytest

from leader.cli import main

pytestmark = pytest.mark.slow

TINY = ["fit.disease.epochs=2", "fit.anatomy.epochs=2", "fit.anatomy.crops_per_image=2",
        "stage1.epochs=3", "stage2.epochs=3", "eval.retrieval_queries=50"]

KEYS = ["stage1_loss_first", "stage1_loss_last", "stage2_loss_first", "stage2_loss_last",
        "retrieval_precision_at_k", "retrieval_k", "anatomy_knn_accuracy", "anatomy_silhouette", "n_images"]


def _run(out, extra, data_root=None):
    argv = ["demo", "--out", str(out), "--quick"]
    if data_root is not None:
        argv += ["--data-root", str(data_root)]
    for s in TINY + extra:
        argv += ["--set", s]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def _check(m, out):
    for k in KEYS:
        assert k in m and m[k] is not None and math.isfinite(m[k]), k
    assert 0.0 <= m["retrieval_precision_at_k"] <= 1.0
    assert 0.0 <= m["anatomy_knn_accuracy"] <= 1.0
    assert -1.0 <= m["anatomy_silhouette"] <= 1.0
    assert m["stage1_loss_last"] < m["stage1_loss_first"]
    assert m["stage2_loss_last"] < m["stage2_loss_first"]
    for t in ("teacher_disease", "teacher_anatomy"):
        assert math.isfinite(m["teachers"][t]["anatomy_knn_accuracy"])
    report = (out / "report.md").read_text()
    assert "precision@" in report and "disease teacher" in report and "anatomy teacher" in report
    for fig in ("losses.png", "tsne-student_e_da.png", "tsne-teacher_disease.png", "tsne-teacher_anatomy.png"):
        assert (out / "figures" / fig).stat().st_size > 5000, fig


def test_demo_on_phantoms(tmp_path):
    out = tmp_path / "demo"
    m = _run(out, ["phantoms.n_images=24"])
    _check(m, out)
    assert m["n_images"] == 24
    assert "phantoms" in m["data"] and "NOT real" in m["data"]
    # a second run resumes: nothing is recomputed, same numbers
    m2 = _run(out, ["phantoms.n_images=24"])
    assert {"manifest", "teacher disease", "teacher anatomy", "student"} <= set(m2["reused"])  # and the report says so
    assert "Reused from an earlier run in this folder" in (out / "report.md").read_text()
    assert m2["retrieval_precision_at_k"] == m["retrieval_precision_at_k"]
    assert m2["stage2_loss_last"] == m["stage2_loss_last"]


def test_demo_on_real_pack(tmp_path, real_pack):
    out = tmp_path / "demo"
    m = _run(out, [], data_root=real_pack)
    _check(m, out)
    assert m["n_images"] == 129
    assert "real radiographs" in m["data"]
    assert m["n_disease_patches"] >= 19  # 9 NIH + 3 TBX11K + 7 JSRT boxes
    assert m["n_landmark_patches"] == 80  # 8 JSRT images x 10 named landmarks
    assert (out / "figures" / "retrieval-student_e_da.png").exists()
