"""CheXpert (BR-10) and MIMIC-CXR-JPG (BR-12) readers on small files in the published formats."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leader.datasets import (MissingFileWarning, UnknownLabelWarning, detect_dataset, filter_views, harmonise,
                             read_chexpert, read_dataset, read_mimic)
from leader.datasets.views import ViewReport
from leader.errors import ManifestError

HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
          "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
          "Fracture,Support Devices\n")

BR10 = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema\n"
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,,1.0,-1.0\n"
    "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,40,Frontal,PA,1.0,,\n"
    "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Male,40,Lateral,,1.0,,0.0\n"
)


def _jpg(path: Path, w: int = 32, h: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)).save(path)


def _chexpert(tmp_path: Path, csv: str = BR10, images: bool = False) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    (root / "train.csv").write_text(csv)
    if images:
        for line in csv.splitlines()[1:]:
            rel = line.split(",")[0].split("/", 1)[1]
            _jpg(root / rel)
    return root


def _lab(m, i, name):
    return m.df[f"label:{name}"].iloc[i]


def test_br10_default_policy_uncertain_ignore_blank_zero(tmp_path):
    m = read_chexpert(_chexpert(tmp_path), check_files=False)
    assert len(m) == 3
    assert _lab(m, 0, "Cardiomegaly") == 1 and np.isnan(_lab(m, 0, "Edema"))  # masked
    assert _lab(m, 1, "Cardiomegaly") == 0 and _lab(m, 1, "Edema") == 0  # blank -> 0
    assert _lab(m, 2, "Edema") == 0 and _lab(m, 2, "No Finding") == 1
    assert m.df["normal"].tolist() == [False, True, True]
    vals = m.labels_array()
    assert set(np.unique(vals[~np.isnan(vals)])) <= {0.0, 1.0}  # -1 never kept as a value
    assert m.df["patient_id"].tolist() == ["patient00001", "patient00002", "patient00002"]
    assert m.df["view"].tolist() == ["AP", "PA", "LATERAL"]


def test_br10_uncertain_excluded_from_loss_and_auc(tmp_path):
    """Under "uncertain=ignore, blank=0" the -1 Edema of row 1 is NaN, which the evaluation
    leaves out of both the probe's training loss and the AUC (its score never matters)."""
    from leader.eval.linear_probe import fit_predict_multilabel
    from leader.eval.metrics import binary_auc

    m = read_chexpert(_chexpert(tmp_path), policy="uncertain=ignore, blank=0", check_files=False)
    y = m.df["label:Edema"].to_numpy(dtype=np.float64)
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 0
    y = np.concatenate([y, [1.0, 1.0]])  # two positives so that the AUC is defined
    s = np.array([0.5, 0.1, 0.2, 0.8, 0.9])
    auc = binary_auc(y, s)
    for v in (-5.0, 0.15, 5.0):  # the masked row's score never changes the AUC
        assert binary_auc(y, np.r_[v, s[1:]]) == auc == 1.0
    X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    base, _ = fit_predict_multilabel(X, y[:, None], [X], C=1.0)
    moved, _ = fit_predict_multilabel(np.r_[[[100.0]], X[1:]], y[:, None], [X], C=1.0)
    np.testing.assert_allclose(base[0], moved[0])  # the NaN row is not in the loss


def test_br10_named_policies(tmp_path):
    root = _chexpert(tmp_path)
    ones = read_chexpert(root, uncertain="ones", check_files=False)
    assert _lab(ones, 0, "Edema") == 1
    zeros = read_chexpert(root, uncertain="zeros", check_files=False)
    assert _lab(zeros, 0, "Edema") == 0
    # blank=ignore: not mentioned -> unknown
    b = read_chexpert(root, blank="ignore", check_files=False)
    assert np.isnan(_lab(b, 1, "Cardiomegaly")) and np.isnan(_lab(b, 1, "Edema"))
    assert read_chexpert(root, uncertain="1", check_files=False).df["label:Edema"].iloc[0] == 1  # alias
    # BR-10's named policies as text
    named = read_chexpert(root, policy="uncertain=ignore, blank=0", check_files=False)
    assert np.isnan(_lab(named, 0, "Edema")) and _lab(named, 1, "Edema") == 0
    assert _lab(read_chexpert(root, policy="uncertain=1", check_files=False), 0, "Edema") == 1
    with pytest.raises(ValueError, match="unknown policy key"):
        read_chexpert(root, policy="uncertainty=1", check_files=False)
    with pytest.raises(ValueError, match="uncertain policy"):
        read_chexpert(root, uncertain="maybe", check_files=False)
    with pytest.raises(ValueError, match="blank policy"):
        read_chexpert(root, blank="ones", check_files=False)


def test_br10_frontal_filter_excludes_lateral_with_blank_ap_pa(tmp_path):
    m = read_chexpert(_chexpert(tmp_path), check_files=False)
    f, rep = filter_views(m, "frontal")
    assert f.ids == ["chexpert/train/patient00001/study1/view1_frontal",
                     "chexpert/train/patient00002/study1/view1_frontal"]
    assert rep.excluded == 1 and rep.unknown == 0


def test_br10_prefix_resolved_once(tmp_path):
    root = _chexpert(tmp_path, images=True)
    # root = the CheXpert-v1.0-small folder itself
    m = read_chexpert(root)
    assert all(Path(p).is_file() for p in m.df["path"])
    assert str(root / "train/patient00001/study1/view1_frontal.jpg") == m.df["path"].iloc[0]
    assert m.df["width"].tolist() == [32, 32, 32]
    # root = the folder above it, with the CSV given explicitly
    m2 = read_chexpert(tmp_path, metadata=root / "train.csv")
    assert m2.df["path"].tolist() == m.df["path"].tolist()
    assert "CheXpert-v1.0-small/CheXpert-v1.0-small" not in "".join(m2.df["path"])


def test_chexpert_valid_split_missing_file_and_unknown_value(tmp_path):
    root = _chexpert(tmp_path, images=True)
    (root / "valid.csv").write_text(
        HEADER + "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
        ",,1.0,1.0,,,,,,0.0,,,0.0,\n"
        "CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg,Male,70,Frontal,PA,"
        ",,2.0,,,,,,,,,,,\n")
    _jpg(root / "valid/patient64541/study1/view1_frontal.jpg")
    with pytest.warns(UnknownLabelWarning, match=r"valid.csv: 1 row\(s\).*line 3 Cardiomegaly='2.0'"):
        with pytest.warns(MissingFileWarning, match=r"skipped 1 row.*patient64542"):
            m = read_chexpert(root)
    assert m.df["split"].value_counts().to_dict() == {"train": 3, "val": 1}
    v = m.df.set_index("id").loc["chexpert/valid/patient64541/study1/view1_frontal"]
    assert v["label:Cardiomegaly"] == 1 and v["label:Lung Opacity"] == 1 and v["label:Pneumothorax"] == 0
    assert v["label:Edema"] == 0  # blank -> 0
    with pytest.warns(UnknownLabelWarning):
        m2 = read_chexpert(root, check_files=False)
    assert np.isnan(m2.df.set_index("id").loc["chexpert/valid/patient64542/study1/view1_frontal", "label:Cardiomegaly"])


def test_chexpert_bad_rows_name_line(tmp_path):
    root = _chexpert(tmp_path, BR10 + "CheXpert-v1.0-small/train/nobody/view1_frontal.jpg,Male,1,Frontal,AP,,,\n")
    with pytest.raises(ManifestError, match=r"train.csv: line 5: .*patientNNNNN"):
        read_chexpert(root, check_files=False)
    root2 = tmp_path / "b"
    root2.mkdir()
    (root2 / "train.csv").write_text(BR10 + BR10.splitlines()[1] + "\n")
    with pytest.raises(ManifestError, match=r"line 5: duplicate Path"):
        read_chexpert(root2, check_files=False)
    # a row with an extra field must not shift the columns silently
    root3 = tmp_path / "c"
    root3.mkdir()
    (root3 / "train.csv").write_text(BR10.replace("Female,68,", "Female,68,,"))
    with pytest.raises(ManifestError, match="more fields than the header|Expected 8 fields"):
        read_chexpert(root3, check_files=False)


def test_chexpert_detect_and_harmonise(tmp_path):
    root = _chexpert(tmp_path)
    assert detect_dataset(tmp_path) == "chexpert"
    m = read_dataset("CheXpert", tmp_path, check_files=False, uncertain="ones")
    assert m.df["label:Edema"].iloc[0] == 1
    h = harmonise(m)
    assert h.label_names == ["Cardiomegaly", "Edema"]  # No Finding has no harmonised name
    assert root.is_dir()


# ---------------------------------------------------------------------------- MIMIC

META = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
        "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
        "PatientOrientationCodeSequence_CodeMeaning\n")
BR12 = [("d1", "PA"), ("d2", "AP"), ("d3", "LATERAL"), ("d4", "LL"), ("d5", ""), ("d6", "SWIMMERS"),
        ("d7", "AP AXIAL")]
CHEX = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
        "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
        "Support Devices\n")


def _mimic(tmp_path: Path, gz: bool = True) -> Path:
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    root.mkdir(parents=True)
    rows = []
    for k, (d, v) in enumerate(BR12):
        subj, study = ("10000032", "50414267") if k < 4 else ("10000764", "57375967")
        rows.append(f"{d},{subj},{study},CHEST (PA AND LAT),{v},3056,2544,21800506,213014.531,"
                    f"CHEST (PA AND LAT),postero-anterior,Erect\n")
    rows.append("d8,10000898,50771383,CHEST,PA,2544,3056,21800506,1,CHEST,postero-anterior,Erect\n")
    text = META + "".join(rows)
    if gz:
        with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
            fh.write(text)
    else:
        (root / "mimic-cxr-2.0.0-metadata.csv").write_text(text)
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        CHEX + "10000032,50414267,,,,,,,,,1.0,,,,,\n" + "10000764,57375967,-1.0,,1.0,,,,,1.0,,,,-1.0,,\n")
    (root / "mimic-cxr-2.0.0-split.csv").write_text(
        "dicom_id,study_id,subject_id,split\n" + "".join(
            f"{d},{'50414267' if k < 4 else '57375967'},{'10000032' if k < 4 else '10000764'},"
            f"{'train' if k < 4 else 'validate'}\n" for k, (d, _) in enumerate(BR12)))
    return root


@pytest.mark.filterwarnings("ignore::leader.datasets.UnknownLabelWarning")
@pytest.mark.filterwarnings("ignore::leader.datasets.UnreadableRowWarning")
def test_br12_mimic_views_counted_never_frontal(tmp_path):
    root = _mimic(tmp_path)
    assert detect_dataset(root) == "mimic"
    with pytest.warns(UnknownLabelWarning, match=r"1 row\(s\).*study 50771383"):
        with pytest.warns(UserWarning, match=r"split 'train': line 9 d8"):
            m = read_mimic(root, check_files=False)
    assert m.df["view"].tolist()[:7] == ["PA", "AP", "LATERAL", "LATERAL", "UNKNOWN", "SWIMMERS", "AP AXIAL"]
    f, rep = filter_views(m.subset(np.arange(7)), "frontal")
    assert f.ids == ["mimic/d1", "mimic/d2"]
    assert isinstance(rep, ViewReport) and rep.unknown == 1 and rep.unusual == {"SWIMMERS": 1, "AP AXIAL": 1}
    assert rep.counts == {"PA": 1, "AP": 1, "LATERAL": 2, "UNKNOWN": 1, "SWIMMERS": 1, "AP AXIAL": 1}
    lat, _ = filter_views(m.subset(np.arange(7)), ["LATERAL", "LL"])
    assert lat.ids == ["mimic/d3", "mimic/d4"]
    # configurable: AP AXIAL counted as AP on request
    f2, _ = filter_views(m, "frontal", extra=["AP AXIAL"])
    assert "mimic/d7" in f2.ids and "mimic/d5" not in f2.ids
    m3 = read_mimic(root, check_files=False, view_map={"ap axial": "AP"})
    assert m3.df["view"].iloc[6] == "AP"
    assert "UNKNOWN" in str(rep)


def test_mimic_labels_per_study_split_and_paths(tmp_path):
    root = _mimic(tmp_path, gz=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_mimic(tmp_path / "mimic-cxr-jpg", check_files=False)
        mo = read_mimic(root, check_files=False, uncertain="ones")
    df = m.df.set_index("id")
    # study 50414267: No Finding=1, the rest blank -> 0 (blank=zeros)
    assert df.loc["mimic/d1", "label:No Finding"] == 1 and df.loc["mimic/d1", "label:Edema"] == 0
    assert bool(df.loc["mimic/d4", "normal"])
    # study 57375967: Atelectasis -1 -> NaN (ignore) / 1 (ones); Consolidation 1
    assert np.isnan(df.loc["mimic/d5", "label:Atelectasis"]) and df.loc["mimic/d6", "label:Consolidation"] == 1
    assert mo.df.set_index("id").loc["mimic/d5", "label:Atelectasis"] == 1
    assert np.isnan(df.loc["mimic/d8"].filter(like="label:").astype(float)).all()  # no label row
    assert df["split"].to_dict() == {"mimic/d1": "train", "mimic/d2": "train", "mimic/d3": "train",
                                     "mimic/d4": "train", "mimic/d5": "val", "mimic/d6": "val",
                                     "mimic/d7": "val", "mimic/d8": "train"}
    assert df.loc["mimic/d1", "path"] == str(root / "files/p10/p10000032/s50414267/d1.jpg")
    assert (df.loc["mimic/d1", "width"], df.loc["mimic/d1", "height"]) == (2544, 3056)  # Columns, Rows
    assert df.loc["mimic/d1", "patient_id"] == "10000032" and df.loc["mimic/d1", "study_id"] == "50414267"


@pytest.mark.filterwarnings("ignore::leader.datasets.UnknownLabelWarning")
def test_mimic_check_files_and_bad_split(tmp_path):
    root = _mimic(tmp_path)
    _jpg(root / "files/p10/p10000032/s50414267/d1.jpg", 40, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownLabelWarning)
        warnings.simplefilter("ignore", UserWarning)
        with pytest.warns(MissingFileWarning, match="skipped 7 row"):
            m = read_mimic(root)
    assert m.ids == ["mimic/d1"] and (m.df["width"].iloc[0], m.df["height"].iloc[0]) == (40, 50)
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\nd1,1,2,holdout\n")
    with pytest.raises(ManifestError, match=r"split.csv: line 2: unknown split 'holdout'"):
        read_mimic(root, check_files=False)
