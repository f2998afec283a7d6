"""Manifest schema, Box validation and Parquet round trip (leader.manifest)."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from leader.errors import BoxError, ManifestError
from leader.manifest import CORE_COLUMNS, Box, Manifest, make_manifest, normalize_view


def _records():
    return [
        {
            "id": "nih/a",
            "path": "/data/a.png",
            "dataset": "nih",
            "split": "train",
            "patient_id": "1",
            "width": 1024,
            "height": 1024,
            "pixel_spacing": 0.143,
            "view": "PA",
            "normal": False,
            "boxes": [Box(10, 20, 40, 60, "Nodule"), Box(100.5, 200.25, 300.75, 400.125, "Infiltration")],
            "landmarks": None,
            "labels": {"Nodule": 1, "Infiltration": 1, "Effusion": 0},
        },
        {
            "id": "jsrt/b",
            "path": "/data/b.png",
            "dataset": "jsrt",
            "width": 1024,
            "height": 1024,
            "view": "PA",
            "normal": True,
            "landmarks": np.arange(332, dtype=np.float64),
            "landmark_scheme": "jsrt166",
            "labels": {"Nodule": 0},
        },
        {
            "path": "/data/c.jpg",
            "dataset": "covid-figure1",
            "labels": {"COVID-19": float("nan")},
            "finding": None,
        },
    ]


# ----------------------------------------------------------------------------- Box


def test_box_geometry_and_scaling():
    b = Box.from_xywh(225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661, "Infiltration")
    s = b.scaled(224 / 1024, 224 / 1024)
    assert s.xywh() == pytest.approx((49.24, 119.66, 18.98, 17.32), abs=0.01)
    assert b.area == pytest.approx(86.7796610169491 * 79.1864406779661)
    assert s.label == "Infiltration"
    assert Box(0, 0, 2, 4, "x").center == (1.0, 2.0)
    with pytest.raises(Exception):
        b.x0 = 3  # frozen


@pytest.mark.parametrize(
    "coords",
    [(0, 0, 0, 10), (0, 0, 10, 0), (5, 0, 1, 10), (float("nan"), 0, 1, 1), (0, 0, float("inf"), 1), ("a", 0, 1, 1)],
)
def test_box_invalid_raises_naming_box(coords):
    with pytest.raises(BoxError) as ei:
        Box(*coords, label="Nodule")
    assert "Nodule" in str(ei.value)  # the message shows the offending box


def test_box_empty_label():
    with pytest.raises(BoxError):
        Box(0, 0, 1, 1, "")


def test_normalize_view():
    assert normalize_view("AP erect") == "AP"
    assert normalize_view(" pa ") == "PA"
    assert normalize_view(None) == "UNKNOWN"
    assert normalize_view(float("nan")) == "UNKNOWN"
    assert normalize_view("") == "UNKNOWN"
    assert normalize_view("LL") == "LATERAL"
    assert normalize_view("SWIMMERS") == "SWIMMERS"  # kept, not frontal


# ------------------------------------------------------------------------ Manifest


def test_make_manifest_defaults_and_schema():
    m = make_manifest(_records())
    assert len(m) == 3
    assert list(m.df.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    assert m.label_names == ["Nodule", "Infiltration", "Effusion", "COVID-19"]
    c = m.df.iloc[2]
    assert c["id"] == "covid-figure1/c" and c["patient_id"] == "c" and c["split"] == "train"
    assert c["view"] == "UNKNOWN" and not c["normal"]
    assert pd.isna(m.df["width"].iloc[2]) and str(m.df["width"].dtype) == "Int64"
    assert m.df["pixel_spacing"].dtype == np.float64 and math.isnan(m.df["pixel_spacing"].iloc[2])
    assert "finding" in m.df.columns  # extra columns allowed
    arr = m.labels_array()
    assert arr.dtype == np.float32 and arr.shape == (3, 4)
    np.testing.assert_array_equal(arr[0], [1, 1, 0, np.nan])
    np.testing.assert_array_equal(arr[1], [0, np.nan, np.nan, np.nan])
    assert all(m.df[c].dtype == np.float32 for c in m.label_columns)
    assert m.boxes(0)[1] == Box(100.5, 200.25, 300.75, 400.125, "Infiltration")
    assert m.boxes(1) == []
    lm = m.landmarks(1)
    assert lm.shape == (166, 2) and lm.dtype == np.float64 and lm[1].tolist() == [2.0, 3.0]
    assert m.landmarks(0) is None
    counts = m.label_counts().set_index("label")
    assert counts.loc["Nodule", "positive"] == 1 and counts.loc["Nodule", "negative"] == 1
    assert counts.loc["Nodule", "unknown"] == 1


def test_manifest_missing_column():
    df = make_manifest(_records()).df.drop(columns=["view"])
    with pytest.raises(ManifestError, match="view"):
        Manifest(df)


def test_manifest_duplicate_ids():
    recs = _records()
    recs[1]["id"] = "nih/a"
    with pytest.raises(ManifestError, match="nih/a"):
        make_manifest(recs)


def test_manifest_bad_label_value_names_row():
    df = make_manifest(_records()).df
    df["label:Nodule"] = df["label:Nodule"].astype(np.float64)
    df.loc[1, "label:Nodule"] = 2.0
    with pytest.raises(ManifestError) as ei:
        Manifest(df)
    assert "jsrt/b" in str(ei.value) and "label:Nodule" in str(ei.value)


def test_manifest_coerces_float64_labels_to_float32():
    df = make_manifest(_records()).df
    df["label:Nodule"] = df["label:Nodule"].astype(np.float64)
    assert Manifest(df).df["label:Nodule"].dtype == np.float32


def test_manifest_non_numeric_label_rejected():
    df = make_manifest(_records()).df
    df["label:Nodule"] = ["yes", "no", None]
    with pytest.raises(ManifestError, match="label:Nodule"):
        Manifest(df)


def test_invalid_box_in_record_names_image():
    recs = _records()
    recs[0]["boxes"] = [{"x0": 10, "y0": 10, "x1": 10, "y1": 50, "label": "Nodule"}]
    with pytest.raises(BoxError, match="nih/a"):
        make_manifest(recs)


def test_box_entirely_outside_image_rejected():
    recs = _records()
    recs[0]["boxes"] = [Box(1100, 50, 1140, 90, "Nodule")]  # BR-09 (c) on a 1024 image
    with pytest.raises(BoxError) as ei:
        make_manifest(recs)
    assert "nih/a" in str(ei.value) and "1100" in str(ei.value)
    recs[0]["boxes"] = [Box(-12, 40, 48, 100, "Nodule")]  # partly outside: allowed
    assert len(make_manifest(recs).boxes(0)) == 1


def test_bad_landmarks_rejected():
    recs = _records()
    recs[1]["landmarks"] = np.arange(5.0)
    with pytest.raises(ManifestError, match="jsrt/b"):
        make_manifest(recs)


def test_record_without_path_or_id():
    with pytest.raises(ManifestError):
        make_manifest([{"dataset": "x"}])


def test_subset_and_concat():
    m = make_manifest(_records())
    s = m.subset(m.df["dataset"] == "nih")
    assert s.ids == ["nih/a"] and s.label_names == m.label_names
    s2 = m.subset([2, 0])
    assert s2.ids == ["covid-figure1/c", "nih/a"] and len(s2.boxes(1)) == 2
    with pytest.raises(ManifestError):
        m.subset(np.array([True, False]))

    other = make_manifest([{"id": "tbx11k/t", "path": "/t.png", "dataset": "tbx11k",
                            "labels": {"Tuberculosis": 1}, "subset": "tb"}])
    c = Manifest.concat([m, other])
    assert len(c) == 4
    assert c.label_names == ["Nodule", "Infiltration", "Effusion", "COVID-19", "Tuberculosis"]
    arr = c.labels_array()
    assert np.isnan(arr[:3, 4]).all() and arr[3, 4] == 1 and np.isnan(arr[3, :4]).all()
    assert c.df["subset"].iloc[3] == "tb" and pd.isna(c.df["subset"].iloc[0])
    assert c.boxes(0) == m.boxes(0)
    with pytest.raises(ManifestError):
        Manifest.concat([m, m])  # ids must stay unique
    assert len(Manifest.concat([])) == 0


def test_labels_array_named_order():
    m = make_manifest(_records())
    a = m.labels_array(["Effusion", "Absent"])
    assert a.shape == (3, 2) and a[0, 0] == 0 and np.isnan(a[:, 1]).all()


# ------------------------------------------------------------------------- Parquet


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    m = make_manifest(_records())
    p = m.save(tmp_path / "sub" / "manifest.parquet")
    assert p.is_file()
    assert [f for f in os.listdir(p.parent) if f != "manifest.parquet"] == []  # no tmp left
    schema = pq.read_schema(p)
    assert schema.field("boxes").type == pa.list_(
        pa.struct([("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()),
                   ("y1", pa.float64()), ("label", pa.string())])
    )
    assert schema.field("landmarks").type == pa.list_(pa.float64())
    assert schema.field("label:Nodule").type == pa.float32()

    r = Manifest.load(p)
    assert r.ids == m.ids and r.label_names == m.label_names
    np.testing.assert_array_equal(r.labels_array(), m.labels_array())  # NaN preserved
    for i in range(len(m)):
        assert r.boxes(i) == m.boxes(i)
        a, b = r.landmarks(i), m.landmarks(i)
        assert (a is None and b is None) or np.array_equal(a, b)
    assert str(r.df["width"].dtype) == "Int64" and pd.isna(r.df["width"].iloc[2])
    assert r.df["width"].iloc[0] == 1024
    assert r.df["normal"].tolist() == [False, True, False]
    assert r.df["finding"].isna().all()
    pd.testing.assert_frame_equal(
        r.df.drop(columns=["boxes", "landmarks", "finding"]),
        m.df.drop(columns=["boxes", "landmarks", "finding"]),
        check_dtype=False,
    )


def test_parquet_round_trip_no_boxes_no_landmarks(tmp_path):
    m = make_manifest([{"path": "/x/a.png", "dataset": "folder"}])
    m.save(tmp_path / "m.parquet")
    r = Manifest.load(tmp_path / "m.parquet")
    assert r.boxes(0) == [] and r.landmarks(0) is None and r.label_names == []
    e = make_manifest([])
    e.save(tmp_path / "e.parquet")
    assert len(Manifest.load(tmp_path / "e.parquet")) == 0


def test_save_is_atomic(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    m = make_manifest(_records())
    p = tmp_path / "m.parquet"
    m.save(p)
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        m.subset([0]).save(p)
    assert p.read_bytes() == before  # old file intact
    assert os.listdir(tmp_path) == ["m.parquet"]  # temporary removed


def test_load_corrupt_names_file(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="bad.parquet"):
        Manifest.load(p)


# ------------------------------------------------------------------ label gaps (issue 13)


def _two_sources():
    a = make_manifest([{"id": "nih/a", "path": "a.png", "dataset": "nih", "labels": {"Nodule": 1, "Mass": 0}},
                       {"id": "nih/b", "path": "b.png", "dataset": "nih", "labels": {"Nodule": 0, "Mass": 0}}])
    c = make_manifest([{"id": "cov/c", "path": "c.png", "dataset": "cov", "labels": {"COVID-19": 1}}])
    return a, c


def test_concat_warns_once_naming_columns_and_sources():
    import warnings

    from leader.manifest import LabelGapWarning

    a, c = _two_sources()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m = Manifest.concat([a, c])
    gaps = [w for w in rec if issubclass(w.category, LabelGapWarning)]
    assert len(gaps) == 1
    msg = str(gaps[0].message)
    assert msg == ("Manifest.concat: label(s) not annotated by a source are unknown (NaN) for its rows: "
                   "nih (2 rows) lacks 'COVID-19'; cov (1 rows) lacks 'Nodule', 'Mass'")
    # one line, and no source-code line when printed
    text = warnings.formatwarning(gaps[0].message, gaps[0].category, gaps[0].filename, gaps[0].lineno)
    assert text.count("\n") == 1
    # the result itself is unchanged: unknown = NaN
    y = m.labels_array(warn_gaps=False)
    assert np.isnan(y[2, :2]).all() and np.isnan(y[:2, 2]).all()
    assert m.label_gaps().values.tolist() == [["nih", "COVID-19", 2], ["cov", "Nodule", 1], ["cov", "Mass", 1]]


def test_labels_array_warns_for_a_column_a_source_lacks():
    from leader.manifest import LabelGapWarning

    a, _ = _two_sources()
    with pytest.warns(LabelGapWarning, match=r"labels_array: .*nih \(2 rows\) lacks 'Effusion'"):
        y = a.labels_array(["Nodule", "Effusion"])
    assert np.isnan(y[:, 1]).all() and y[:, 0].tolist() == [1, 0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.labels_array()  # every label known for every row: no warning
        a.labels_array(["Effusion"], warn_gaps=False)
    # a column present but NaN for all rows of one source is a gap too
    df = a.df.copy()
    df["label:Mass"] = np.float32(np.nan)
    assert Manifest(df).label_gaps().values.tolist() == [["nih", "Mass", 2]]


# ------------------------------------------------------------------ anatomy boxes, report


def test_anatomy_boxes_validated_and_round_trip(tmp_path):
    recs = [{"id": "c/a", "path": "a.png", "width": 100, "height": 80,
             "anatomy_boxes": [Box(5, 5, 40, 70, "right lung")]},
            {"id": "c/b", "path": "b.png", "width": 100, "height": 80, "anatomy_boxes": None}]
    m = make_manifest(recs)
    assert m.anatomy_boxes(0) == [Box(5, 5, 40, 70, "right lung")] and m.anatomy_boxes(1) is None
    assert m.boxes(0) == []
    m.save(tmp_path / "m.parquet")
    r = Manifest.load(tmp_path / "m.parquet")
    assert r.anatomy_boxes(0) == m.anatomy_boxes(0) and r.anatomy_boxes(1) is None
    recs[0]["anatomy_boxes"] = [Box(150, 5, 190, 70, "left lung")]
    with pytest.raises(BoxError, match=r"c/a: anatomy_boxes box .* lies entirely outside the 100x80 image"):
        make_manifest(recs)


def test_skip_report_one_format_for_index_and_training_items():
    from leader.datasets import SkippedItem, collect_skipped, skip_report
    from leader.datasets._common import record_note

    with collect_skipped() as outer:
        with collect_skipped() as log:
            record_note("duplicate row", "cov", "x.png listed twice", file="x.png")
        outer.append(SkippedItem("nih/b", "/b.png", "nih", "missing file", "/b.png: image file not found"))
    rep = skip_report(outer, "raise")
    assert rep["count"] == 1 and rep["occurrences"] == 1 and rep["counts_by_reason"] == {"missing file": 1}
    assert rep["notes"] == [{"kind": "duplicate row", "dataset": "cov", "message": "x.png listed twice",
                             "data": {"file": "x.png"}}] and rep["counts_by_note"] == {"duplicate row": 1}
    assert len(log.notes) == 1  # nested collectors pass notes outwards
    # training items (dicts with stage / epoch; one id per epoch): sorted, counted by error class
    items = [{"id": "b", "reason": "ImageReadError: x", "stage": 1, "epoch": 1},
             {"id": "b", "reason": "ImageReadError: x", "stage": 1, "epoch": 0},
             {"id": "a", "reason": "BoxError: y", "stage": 1, "epoch": 0}]
    t = skip_report(items, "skip")
    assert t["count"] == 2 and t["occurrences"] == 3
    assert t["counts_by_reason"] == {"ImageReadError": 2, "BoxError": 1}
    assert [(i["epoch"], i["id"]) for i in t["items"]] == [(0, "a"), (0, "b"), (1, "b")]
    assert t["notes"] == []
