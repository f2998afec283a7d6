"""Every evaluation protocol end to end on the real-cxr pack (skipped when it is absent).

NIH and TBX11K boxes (retrieval, lesion-level probe), JSRT landmarks (anatomy, entanglement),
NIH / COVID labels (image-level probe, fine-tuning) and lung masks (UperNet segmentation:
lung-segmentation-2d, opencxr, the V7 Labs COVID mask, JSRT contours). Tiny untrained
backbones at 64 px: the tests prove the wiring on real input, not accuracy.
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from leader.eval.metrics import UndefinedMetricWarning

TINY_SWIN = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4)

pytestmark = pytest.mark.realdata


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pack(real_pack, tmp_path_factory):
    from leader.datasets.pack import index_root
    from leader.eval.features import load_representations
    from leader.models.student import LeaderModel
    from leader.patches import disease_patches, landmark_patches

    root = tmp_path_factory.mktemp("evalreal")
    full = index_root(real_pack, check_files=True)
    keep = full.df["dataset"].isin(["nih", "tbx11k", "jsrt"]).to_numpy()
    m = full.subset(keep)                      # 1024/512-px PNGs: quick to decode
    m.save(root / "manifest.parquet")
    torch.manual_seed(0)
    LeaderModel(backbone="swin_tiny_patch4_window7_224", head_dims={"disease": 8, "anatomy": 8}, img_size=64,
                backbone_kwargs=TINY_SWIN).save_checkpoint(root / "student")
    reps = load_representations([f"{root / 'student'}#e_da", "timm:test_convnext"])
    dis, skipped = disease_patches(m, on_bad_box="skip")
    return {"root": root, "full": full, "m": m, "reps": reps, "lm": landmark_patches(m), "dis": dis,
            "real": real_pack}


def test_real_pack_has_what_the_protocols_need(pack):
    m, dis, lm = pack["m"], pack["dis"], pack["lm"]
    assert set(m.df["dataset"]) == {"nih", "tbx11k", "jsrt"}
    assert len(lm) == 80 and lm["label"].nunique() == 10            # 8 JSRT images x 10 landmarks
    assert {"Nodule", "Cardiomegaly"} <= set(dis["label"])          # NIH boxes (and JSRT nodules)
    assert dis["image_id"].str.startswith("tbx11k/").any()           # TBX11K boxes


def test_real_anatomy(pack, tmp_path):
    from leader.eval.protocols import run_anatomy

    df = run_anatomy(pack["reps"], pack["m"], pack["lm"], tmp_path, perplexity=10)
    assert list(df["representation"]) == ["student E_DA", "timm test_convnext"]
    assert (df["n_patches"] == 80).all() and (df["chance"] == 0.1).all()
    assert df["knn_accuracy"].between(0, 1).all()
    assert (tmp_path / "figures" / "tsne-timm-test-convnext.png").is_file()


def test_real_retrieval(pack, tmp_path):
    from leader.eval.protocols import run_retrieval

    df = run_retrieval(pack["reps"][:1], pack["m"], pack["dis"], tmp_path, k=5, n_queries=8, seed=0)
    row = df.iloc[0]
    assert 0 <= row["precision_at_k"] <= 1 and 0 < row["chance"] < 1 and row["n_queries"] >= 1
    raw = json.loads((tmp_path / "retrieval.json").read_text())["results"]["student E_DA"]
    # box labels the manifest has no column for (TBX11K subtypes map to columns; NIH "Infiltrate") are
    # skipped with a reason, never silently counted
    for q in raw["per_query"]:
        assert ("precision" in q) != ("skipped" in q)
    assert (tmp_path / "figures" / "retrieval-student-e-da.png").is_file()


def test_real_image_probe_reports_undefined_classes(pack, tmp_path):
    from leader.eval.protocols import run_probe

    with pytest.warns(UndefinedMetricWarning, match="left out of the macro mean"):
        rec = run_probe(pack["reps"], pack["m"], tmp_path, fractions=[1.0], seeds=[0], Cs=(1.0,), min_known=4)
    assert set(rec["method"]) == {"student E_DA", "timm test_convnext"}
    pc = pd.read_csv(tmp_path / "probe-per-class.csv")
    pc["undefined"] = pc["undefined"].fillna("")
    und = pc[pc["undefined"] != ""]
    assert len(und) > 0                                    # rare NIH labels: one value in the small test split
    assert "one label value" in und["undefined"].iloc[0] or "no known" in und["undefined"].iloc[0]
    defined = pc[pc["undefined"] == ""].groupby("method")["auc"].mean()
    np.testing.assert_allclose(rec.set_index("method")["value"].sort_index(), defined.sort_index())
    assert "Undefined per-class AUCs" in (tmp_path / "probe.md").read_text()


def test_real_lesion_probe(pack, tmp_path):
    from leader.eval.protocols import run_probe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rec = run_probe(pack["reps"][:1], pack["m"], tmp_path, level="lesion", patches=pack["dis"], seeds=[0],
                        Cs=(1.0,), split_fractions=(0.5, 0.1, 0.4))
    assert len(rec) == 1 and rec["task"].item() == "lesion macro AUC @100%"


def test_real_masks_found(pack):
    from leader.eval.data import find_masks, load_mask

    masks = find_masks(pack["full"], pack["real"])
    by = dict(zip(masks["image_id"], masks["source"]))
    for i in ("1", "2", "3", "4"):
        assert by[f"lung-segmentation-2d/{i}"] == "file"
    assert by["opencxr/test_img1"] == "file"
    assert by["covid-chestxray-dataset/16747_3_1"] == "file"   # a PNG named .jpg, read by content
    assert sum(1 for k, v in by.items() if k.startswith("jsrt/") and v == "jsrt166") == 8
    row = masks[masks["image_id"] == "covid-chestxray-dataset/16747_3_1"].iloc[0]
    mk = load_mask(pack["full"], row)
    assert mk.shape == (885, 1036) and set(np.unique(mk)) == {0, 1} and 0.1 < mk.mean() < 0.6


def test_real_finetune_segmentation_and_classification(pack, tmp_path):
    from leader.eval.data import find_masks
    from leader.eval.protocols import run_finetune

    full = pack["full"]
    masks = find_masks(full, pack["real"])
    masks = masks[masks["image_id"].str.startswith(("lung-segmentation-2d/", "opencxr/", "jsrt/"))]
    rec = run_finetune([("student", str(pack["root"] / "student"))], full, tmp_path / "seg", task="segmentation",
                       masks=masks.reset_index(drop=True), fractions=[1.0], seeds=[0], max_steps=1, batch_size=4,
                       decoder_channels=16)
    assert set(rec["task"]) == {"Dice @100%", "IoU @100%"} and rec["value"].between(0, 1).all()
    nih = pack["m"].subset((pack["m"].df["dataset"] == "nih").to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rec = run_finetune([("timm", "timm:test_convnext")], nih, tmp_path / "cls", fractions=[0.5], seeds=[0],
                           max_steps=1, batch_size=8)
    assert rec["task"].tolist() == ["image macro AUC @50%"]
    assert (tmp_path / "cls" / "finetune.md").is_file()


def test_real_entanglement(pack, tmp_path):
    from leader.eval.entanglement import run_entanglement

    pm = run_entanglement(pack["reps"], pack["m"], pack["lm"], tmp_path, disease_patches=pack["dis"], n_splits=4,
                          retrieval_k=5)
    assert pm.shape == (2, 3) and pm.iloc[0, :2].between(0, 1).all()
    assert (tmp_path / "entanglement.md").read_text().count("|") > 10


def test_real_ablation_branches(pack, tmp_path):
    """Two variants of the packaged 'branches' idea, trained for one step each on the real images."""
    import yaml

    from leader.eval.ablation import run_ablation
    from leader.teachers.base import InputSpec
    from leader.teachers.module import ModuleTeacher

    sets = tmp_path / "sets.yaml"
    sets.write_text(yaml.safe_dump({"sets": {"b": {"baselines": True, "variants": [
        {"name": "both", "teachers": ["disease", "anatomy"]},
        {"name": "anatomy only", "teachers": ["anatomy"]}]}}}))
    teachers = {"disease": ModuleTeacher.from_timm("disease", "test_convnext", input_spec=InputSpec(size=64)),
                "anatomy": ModuleTeacher.from_timm("anatomy", "test_efficientnet", input_spec=InputSpec(size=64))}
    m = pack["m"].subset(pack["m"].df["dataset"].isin(["jsrt", "tbx11k"]).to_numpy() |
                         (np.arange(len(pack["m"])) % 3 == 0))
    tiny = ["student.img_size=64", "student.backbone=swin_tiny_patch4_window7_224",
            "student.backbone_kwargs={embed_dim: 16, depths: [1,1,1,1], num_heads: [1,1,1,1], window_size: 4}",
            "stage1.epochs=1", "stage2.epochs=1", "stage1.batch_size=32", "stage2.batch_size=64", "precision=fp32",
            "device=cpu", "augment.enabled=false", "checkpoint_every=0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rec = run_ablation("b", m, teachers, tmp_path / "o", overrides=tiny, sets_file=sets, n_splits=3,
                           retrieval_k=3)
    assert set(rec["method"]) == {"both", "anatomy only", "disease teacher", "anatomy teacher", "teachers concat"}
    from leader.models.student import load_model

    assert load_model(tmp_path / "o" / "runs" / "anatomy-only" / "seed-0" / "final").head_names == ["anatomy"]
    assert (tmp_path / "o" / "figures" / "ablation.png").is_file()
