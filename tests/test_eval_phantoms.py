"""Every evaluation protocol end to end on chest phantoms with tiny backbones (seconds each).

The models are untrained (random weights): these tests prove the wiring (files written,
shapes, splits, statistics, ensembles, channels-last conversion), not accuracy.
"""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from leader.eval.features import (Representation, StoreSource, load_representations, open_source, parse_rep_spec,
                                  student_source)
from leader.eval.metrics import UndefinedMetricWarning

TINY_SWIN = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on shared cores: one intra-op thread is several times faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """12 phantoms (128 px), two tiny teachers and a tiny (untrained) student, all on disk."""
    from leader.models.student import LeaderModel
    from leader.patches import disease_patches, landmark_patches
    from leader.phantoms import make_phantom_pack
    from leader.teachers.base import InputSpec
    from leader.teachers.module import ModuleTeacher

    root = tmp_path_factory.mktemp("evalkit")
    torch.manual_seed(0)
    m = make_phantom_pack(root / "ph", n_images=12, size=128, seed=0)
    td = ModuleTeacher.from_timm("disease", "test_convnext", input_spec=InputSpec(size=64))
    ta = ModuleTeacher.from_timm("anatomy", "test_efficientnet", input_spec=InputSpec(size=64))
    td.save(root / "teachers" / "disease")
    ta.save(root / "teachers" / "anatomy")
    st = LeaderModel.for_teachers({"disease": td, "anatomy": ta}, backbone="swin_tiny_patch4_window7_224",
                                  img_size=64, backbone_kwargs=TINY_SWIN)
    st.save_checkpoint(root / "student")
    dis, _ = disease_patches(m, on_bad_box="skip")
    return {"root": root, "m": m, "manifest": root / "ph" / "manifest.parquet", "student": root / "student",
            "td": root / "teachers" / "disease", "ta": root / "teachers" / "anatomy", "lm": landmark_patches(m),
            "dis": dis}


@pytest.fixture(scope="module")
def reps(kit):
    """student E_DA and E'_A, both teachers (one source each, shared by all tests of the module)."""
    return load_representations([f"{kit['student']}#e_da,anatomy", f"disease teacher={kit['td']}",
                                 f"anatomy teacher={kit['ta']}"])


def test_sources_and_specs(kit, reps, tmp_path):
    from leader.embed import embed_dataset, student_embed_fn
    from leader.patches import PatchDataset

    assert [r.name for r in reps] == ["student E_DA", "student E'_A", "disease teacher", "anatomy teacher"]
    assert [r.source.kind for r in reps] == ["student", "student", "teacher", "teacher"]
    assert parse_rep_spec("mine=timm:resnet18#embedding") == ("mine", "timm:resnet18", ["embedding"])
    assert parse_rep_spec("timm:resnet18:/w.safetensors") == (None, "timm:resnet18:/w.safetensors", None)
    # any timm model (random init: a floor), at its own input size
    t = open_source("timm:test_vit", name="vit").representations()[0]
    assert t.source.kind == "timm" and t.images(kit["m"]).shape == (12, t.dim)
    # an embedding store gives the same vectors as the checkpoint it was written from
    lm = kit["lm"].iloc[:20]
    src = reps[0].source
    embed_dataset(student_embed_fn(src.module), PatchDataset(kit["m"].df, lm, 64), tmp_path / "st" / "patches",
                  {"e_da": src.dims["e_da"], **src.module.head_dims}, precision="fp32")
    store = open_source(str(tmp_path / "st"))
    assert isinstance(store, StoreSource) and set(store.keys) == {"e_da", "disease", "anatomy"}
    np.testing.assert_allclose(Representation(store, "e_da").patches(kit["m"], lm), reps[0].patches(kit["m"], lm),
                               rtol=1e-4, atol=1e-5)
    # --cache-dir: vectors also go to a resumable store, read back from it
    cached = open_source(str(kit["student"]), cache_dir=tmp_path / "cache").representations(["e_da"])[0]
    np.testing.assert_allclose(cached.patches(kit["m"], lm), reps[0].patches(kit["m"], lm), rtol=1e-4, atol=1e-5)
    assert len(StoreSource("c", [tmp_path / "cache"]).stores[0]) == 20
    with pytest.raises(KeyError, match="not in the embedding store"):
        Representation(store, "e_da").images(kit["m"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a student checkpoint"):
        open_source(str(tmp_path / "empty"))


def test_anatomy_protocol_files_and_reproducible_tsne(kit, reps, tmp_path):
    from leader.eval.protocols import run_anatomy

    two = reps[:1] + reps[3:]
    df = run_anatomy(two, kit["m"], kit["lm"], tmp_path / "a", seed=3, perplexity=5, k=3)
    assert list(df["representation"]) == ["student E_DA", "anatomy teacher"]
    assert ((df["knn_accuracy"] >= 0) & (df["knn_accuracy"] <= 1)).all() and (df["chance"] == 0.1).all()
    assert df["nmi"].between(0, 1).all() and df["silhouette"].between(-1, 1).all()
    out = tmp_path / "a"
    for f in ("anatomy.md", "anatomy.csv", "anatomy.json", "figures/tsne-student-e-da.png",
              "figures/tsne-student-e-da.json", "figures/tsne-anatomy-teacher.csv"):
        assert (out / f).is_file(), f
    settings = json.loads((out / "figures" / "tsne-student-e-da.json").read_text())
    assert settings["seed"] == 3 and settings["deterministic"] is True
    first = pd.read_csv(out / "figures" / "tsne-student-e-da.csv")
    run_anatomy(reps[:1], kit["m"], kit["lm"], tmp_path / "b", seed=3, perplexity=5, k=3)
    again = pd.read_csv(tmp_path / "b" / "figures" / "tsne-student-e-da.csv")
    np.testing.assert_allclose(first[["x", "y"]], again[["x", "y"]], atol=1e-6)
    assert "| student E_DA |" in (out / "anatomy.md").read_text()


def test_retrieval_protocol(kit, reps, tmp_path):
    from leader.eval.protocols import run_retrieval

    df = run_retrieval(reps[:1] + reps[2:3], kit["m"], kit["dis"], tmp_path, k=3, n_queries=6, seed=1)
    assert df["precision_at_k"].between(0, 1).all() and (df["n_queries"] == 6).all()
    assert df["chance"].between(0, 1).all()
    assert (tmp_path / "figures" / "retrieval-student-e-da.png").stat().st_size > 5000
    raw = json.loads((tmp_path / "retrieval.json").read_text())["results"]["student E_DA"]
    assert len(raw["per_query"]) == 6
    # K larger than every gallery: reported, not crashed
    df = run_retrieval(reps[:1], kit["m"], kit["dis"], tmp_path / "big", k=100, figure=False)
    assert math.isnan(df["precision_at_k"].iloc[0]) and "K=100" in df["note"].iloc[0]


def test_linear_probe_image_level_with_teacher_ensembles(kit, reps, tmp_path):
    from leader.eval.protocols import run_probe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rec = run_probe(reps[:1] + reps[2:], kit["m"], tmp_path, fractions=[0.5, 1.0], seeds=[0, 1],
                        Cs=(0.1, 1.0), min_known=1)
    methods = set(rec["method"])
    assert methods == {"student E_DA", "disease teacher", "anatomy teacher", "teachers concat", "teachers average"}
    assert set(rec["task"]) == {"image macro AUC @50%", "image macro AUC @100%"}
    assert len(rec) == 5 * 2 * 2
    table = pd.read_csv(tmp_path / "probe-table.csv")
    assert table.groupby("task")["best"].sum().tolist() == [1, 1]
    md = (tmp_path / "probe.md").read_text()
    assert "± " in md and "teachers average" in md and (tmp_path / "figures" / "probe.png").is_file()
    pc = pd.read_csv(tmp_path / "probe-per-class.csv")
    assert set(pc["class"]) == {"Nodule", "Consolidation"}


def test_linear_probe_lesion_level(kit, reps, tmp_path):
    from leader.eval.protocols import run_probe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rec = run_probe(reps[:1], kit["m"], tmp_path, level="lesion", patches=kit["dis"], seeds=[0], Cs=(1.0,))
    assert rec["task"].tolist() == ["lesion macro AUC @100%"]
    assert rec["n_train"].item() + rec["n_test"].item() <= len(kit["dis"])


def test_entanglement_matrix(kit, reps, tmp_path):
    from leader.eval.entanglement import ANATOMY_ROW, DISEASE_ROW, run_entanglement

    pm = run_entanglement(reps, kit["m"], kit["lm"], tmp_path, disease_patches=kit["dis"], n_splits=3,
                          retrieval_k=3, min_known=1)
    assert list(pm.index) == [ANATOMY_ROW, DISEASE_ROW]
    assert list(pm.columns) == [r.name for r in reps] + ["chance"]
    assert pm.loc[ANATOMY_ROW].between(0, 1).all()
    assert (tmp_path / "figures" / "entanglement.png").is_file()
    z = pd.read_csv(tmp_path / "entanglement-zero-shot.csv")
    assert len(z) == 2 and "student E_DA" in z.columns


def test_finetune_classification_and_upernet_segmentation(kit, tmp_path):
    from leader.eval.data import find_masks
    from leader.eval.protocols import run_finetune

    masks = find_masks(kit["m"])
    assert len(masks) == 12 and set(masks["source"]) == {"jsrt166"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rec = run_finetune([("student", str(kit["student"])), ("disease teacher", str(kit["td"])),
                            ("anatomy teacher", str(kit["ta"]))], kit["m"], tmp_path / "cls", fractions=[1.0],
                           seeds=[0], max_steps=1, batch_size=4, min_known=1)
    assert set(rec["method"]) == {"student", "disease teacher", "anatomy teacher", "teachers average"}
    rec = run_finetune([("student", str(kit["student"]))], kit["m"], tmp_path / "seg", task="segmentation",
                       fractions=[1.0], seeds=[0], max_steps=2, batch_size=4, decoder_channels=16)
    assert set(rec["task"]) == {"Dice @100%", "IoU @100%"}
    assert rec["value"].between(0, 1).all()
    raw = json.loads((tmp_path / "seg" / "finetune.json").read_text())["results"]["student|0|1.0"]
    assert raw["steps"] == 2 and raw["n_test"] >= 1 and len(raw["dice_per_image"]) == raw["n_test"]


def test_cli_eval_commands(kit, tmp_path, capsys):
    from leader.cli import main

    base = ["--manifest", str(kit["manifest"]), "--rep", f"{kit['student']}#e_da", "--rep", f"T={kit['ta']}"]
    assert main(["eval", "anatomy", *base, "--out", str(tmp_path / "a"), "--perplexity", "5",
                 "--patch-size", "300"]) == 0
    out = capsys.readouterr().out
    assert "| student E_DA |" in out and (tmp_path / "a" / "anatomy.md").is_file()
    assert main(["eval", "retrieval", *base, "--out", str(tmp_path / "r"), "--k", "3"]) == 0
    assert (tmp_path / "r" / "retrieval.csv").is_file()
    # no representation given: a clear error, exit status 2
    assert main(["eval", "anatomy", "--out", str(tmp_path / "x"), "--manifest", str(kit["manifest"])]) == 2
    assert "--rep" in capsys.readouterr().err


def test_ablation_set_trains_and_compares(kit, tmp_path):
    import yaml

    from leader.cli import main

    sets = tmp_path / "sets.yaml"
    sets.write_text(yaml.safe_dump({"sets": {"mini": {"baselines": True, "variants": [
        {"name": "both", "teachers": ["disease", "anatomy"]},
        {"name": "disease only", "teachers": ["disease"], "overrides": {"loss": "soft_ce"}}]}}}))
    tiny = ["student.img_size=64", "student.backbone=swin_tiny_patch4_window7_224",
            "student.backbone_kwargs={embed_dim: 16, depths: [1,1,1,1], num_heads: [1,1,1,1], window_size: 4}",
            "stage1.epochs=1", "stage2.epochs=1", "stage1.batch_size=12", "stage2.batch_size=24", "precision=fp32",
            "device=cpu", "augment.enabled=false", "checkpoint_every=0"]
    args = ["eval", "ablation", "mini", "--sets-file", str(sets), "--manifest", str(kit["manifest"]),
            "--teacher", f"disease={kit['td']}", "--teacher", f"anatomy={kit['ta']}", "--out", str(tmp_path / "o"),
            "--folds", "3", "--retrieval-k", "3"]
    for s in tiny:
        args += ["--set", s]
    assert main(args) == 0
    t = pd.read_csv(tmp_path / "o" / "ablation-table.csv")
    assert set(t["method"]) == {"both", "disease only", "disease teacher", "anatomy teacher", "teachers concat"}
    assert set(t["task"]) == {"anatomy probe acc.", "anatomy kNN acc.", "disease probe AUC", "retrieval P@K"}
    assert (tmp_path / "o" / "runs" / "disease-only" / "seed-0" / "final" / "model.safetensors").is_file()
    from leader.models.student import load_model

    assert load_model(tmp_path / "o" / "runs" / "disease-only" / "seed-0" / "final").head_names == ["disease"]
    assert "**" in (tmp_path / "o" / "ablation.md").read_text()


def test_packaged_ablation_sets_resolve():
    from leader.eval.ablation import load_ablation_sets, resolve_set

    sets = load_ablation_sets()
    assert {"loss", "backbone", "branches", "all"} <= set(sets)
    loss = resolve_set("loss", sets)
    assert [v["overrides"]["loss"] for v in loss["variants"]] == ["mse", "soft_ce"]
    bb = resolve_set("backbone", sets)
    assert [v["overrides"]["student"]["backbone"] for v in bb["variants"]] == ["swin_base_patch4_window7_224",
                                                                                 "convnext_base"]
    br = resolve_set("branches", sets)
    assert [v["teachers"] for v in br["variants"]] == [["disease", "anatomy"], ["disease"], ["anatomy"]]
    assert len(resolve_set("all", sets)["variants"]) == 7
    with pytest.raises(KeyError, match="known"):
        resolve_set("nope", sets)


def test_student_source_from_model_object(kit):
    from leader.models.student import load_model

    src = student_source(load_model(kit["student"]))
    assert src.keys == ["e_da", "disease", "anatomy"] and src.img_size == 64
