"""The composition layer (leader.recipe): one place assembles a run; teachers and roles come from the config."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leader.config import ConfigError, load_config
from leader.recipe import build_student, patch_tables, plan, resolve_teachers, stage_datasets
from leader.teachers.base import InputSpec
from leader.teachers.module import ModuleTeacher, save_teacher

SRC = Path(__file__).parents[1] / "src" / "leader"


def _teacher(name: str, dim: int, seed: int) -> ModuleTeacher:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, 4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, dim))
    return ModuleTeacher(name, net, InputSpec(size=32, channels=3))


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from leader.phantoms import make_phantom_pack

    root = tmp_path_factory.mktemp("pack")
    m = make_phantom_pack(root, n_images=10, size=96, seed=3)
    return root / "manifest.parquet", m


def test_trainer_is_constructed_in_one_place():
    """Nothing but recipe.distil builds a Trainer (the class itself is defined in train/loop.py)."""
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                   if "Trainer(" in p.read_text() and p.name != "loop.py")
    assert users == ["recipe.py"]


def test_plan_says_what_runs_with_one_teacher(pack):
    _, m = pack
    cfg = load_config("demo-quick", ["student.img_size=32"])
    teachers = {"disease": _teacher("disease", 6, 1)}
    s1, s2 = stage_datasets(cfg, teachers, m)
    lines = plan(cfg, teachers, s1, s2)
    assert lines[0].startswith("stage 1 (whole images): 10 samples x 8 epochs, distilling disease (disease")
    assert lines[1].startswith("stage 2 (image/patch pairs):") and "distilling disease" in lines[1]
    assert lines[2] == "teacher 'anatomy' (anatomy) is configured but has no source: not used, no head"
    # an anatomy-only run has no stage 1 (the anatomy teacher is distilled in stage 2 only)
    a = {"anatomy": _teacher("anatomy", 5, 2)}
    s1, s2 = stage_datasets(cfg, a, m)
    assert s1 is None and s2 is not None
    assert plan(cfg, a, s1, s2)[0] == "stage 1 (whole images): skipped: no teacher is distilled in it"


def test_teacher_roles_come_from_the_config(pack):
    _, m = pack
    cfg = load_config("demo-quick", ["teachers.rad.kind=other", "teachers.rad.stages=[1, 2]",
                                     "teachers.rad.weight=0.5"])
    assert cfg.stage_teachers(1, ["disease", "anatomy", "rad"]) == ["disease", "rad"]
    assert cfg.stage_teachers(2, ["disease", "anatomy", "rad"]) == ["disease", "anatomy", "rad"]
    assert cfg.teachers_of_kind("other") == ["rad"]
    with pytest.raises(ConfigError, match=r"teacher 'x' is not in the config's teachers .*teachers\.x\.kind"):
        resolve_teachers(cfg, {"x": _teacher("x", 3, 0)})
    with pytest.raises(ConfigError, match="no teacher to distil"):
        resolve_teachers(cfg, {})
    # `teachers.NAME: null` removes a configured teacher
    assert list(load_config(None, ["teachers.anatomy=null"]).teachers) == ["disease"]


def test_student_is_seeded_and_patch_tables_follow_the_config(pack):
    _, m = pack
    cfg = load_config("demo-quick", ["student.img_size=32", "student.backbone=test_vit",
                                     "student.backbone_kwargs={}", "patches.healthy_per_image=3"])
    t = {"disease": _teacher("disease", 6, 1), "anatomy": _teacher("anatomy", 5, 2)}
    a, b = build_student(cfg, t), build_student(cfg, t)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.head_dims == {"disease": 6, "anatomy": 5}
    tables = patch_tables(cfg, m)
    assert len(tables.healthy) == 3 * int(m.df["normal"].sum())
    assert len(tables.disease) == sum(len(b) for b in m.df["boxes"])
    assert list(tables.pairs["kind"].unique()) == [k for k in ("disease", "healthy") if len(getattr(tables, k))]


def test_training_datasets_must_not_augment(pack):
    """Augmentation is applied once, by the trainer's view policy, never by the dataset."""
    from leader.patches import ImageDataset
    from leader.transforms import PairedAugment
    from leader.views import check_unaugmented

    _, m = pack
    check_unaugmented(ImageDataset(m, 32))
    with pytest.raises(ValueError, match="un-augmented items"):
        check_unaugmented(ImageDataset(m, 32, transform=PairedAugment()))


def test_no_import_cycle_counting_imports_inside_functions():
    """Issue 12: dependencies point one way; an import inside a function counts too."""
    import ast

    mods = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p

    def resolve(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
                modname = ".".join(base + ([node.module] if node.module else []))
                targets = [resolve(f"{modname}.{a.name}") or resolve(modname) for a in node.names]
            else:
                continue
            graph[mod].update(t for t in targets if t and t != mod)
    # depth-first search for a back edge
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(v: str, stack: list[str]) -> bool:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycle.extend(stack[stack.index(w):] + [v, w] if w in stack else [v, w])
                return True
            if w not in state and visit(w, stack + [v]):
                return True
        state[v] = 2
        return False

    for v in sorted(graph):
        if v not in state and visit(v, []):
            break
    assert not cycle, " -> ".join(cycle)


@pytest.mark.slow
def test_three_teacher_student_trains_embeds_evaluates_and_exports_through_the_cli(pack, tmp_path):
    """A third teacher is a config entry: train, embed, evaluate and export need no code change."""
    from leader.cli import main
    from leader.models.student import load_model
    from leader.store import EmbeddingStore
    from leader.train.loop import read_losses

    import timm

    manifest, _ = pack
    # timm test networks saved as teacher folders (any timm model works the same way)

    for name, seed in (("disease", 1), ("anatomy", 2), ("rad", 3)):
        torch.manual_seed(seed)
        net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
        save_teacher(net, "test_resnet", {}, InputSpec(size=32, channels=3), name, tmp_path / "teachers" / name)
    cfg = ["--config", "demo-quick", "--set", "student.img_size=32", "--set", "student.backbone=test_vit",
           "--set", "student.backbone_kwargs={}", "--set", "stage1.epochs=2", "--set", "stage2.epochs=2",
           "--set", "stage1.batch_size=5", "--set", "stage2.batch_size=8", "--set", "device=cpu",
           "--set", "precision=fp32", "--set", "teachers.rad.kind=other", "--set", "teachers.rad.stages=[2]",
           "--set", "teachers.rad.weight=0.5"]
    teach = [x for n in ("disease", "anatomy", "rad") for x in ("--teacher", f"{n}={tmp_path / 'teachers' / n}")]
    run = tmp_path / "run"
    assert main(["train", "--manifest", str(manifest), *teach, "--out", str(run), *cfg]) == 0
    model = load_model(run / "final")
    rad_dim = ModuleTeacher.from_checkpoint_dir(tmp_path / "teachers" / "rad").dim
    assert model.head_names == ["disease", "anatomy", "rad"] and model.head_dims["rad"] == rad_dim
    rows = read_losses(run / "losses.csv")
    assert {k for k in rows[0] if k.startswith("loss_rad")} == {"loss_rad_image", "loss_rad_patch"}
    stage1 = [r for r in rows if r["stage"] == 1]
    assert all(math.isnan(r["loss_rad_image"]) for r in stage1)  # rad is distilled in stage 2 only
    assert all(math.isfinite(r["loss_rad_image"]) for r in rows if r["stage"] == 2)
    saved = json.loads((run / "final" / "config.json").read_text())["extra"]["config"]["teachers"]
    assert saved["rad"] == {"source": None, "kind": "other", "stages": [2], "weight": 0.5, "target_norm": "none"}
    # embed: one key per head
    assert main(["embed", "--checkpoint", str(run / "final"), "--manifest", str(manifest), "--out",
                 str(tmp_path / "emb"), "--device", "cpu", "--precision", "fp32"]) == 0
    store = EmbeddingStore.open(tmp_path / "emb")
    assert set(store.dims) == {"e_da", "disease", "anatomy", "rad"} and len(store) == 10
    # evaluate: every head of the student is a representation
    assert main(["eval", "anatomy", "--manifest", str(manifest), "--rep", str(run / "final"),
                 "--out", str(tmp_path / "ev"), "--perplexity", "5"]) == 0
    table = (tmp_path / "ev" / "anatomy.md").read_text()
    assert "student" in table and "rad" in table
    # export: the model card names the third head and its role
    assert main(["export", "--checkpoint", str(run / "final"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"| `rad` | {rad_dim} | distilled embedding of teacher 'rad' (other; its teacher's space) |" in card
    assert main(["export", "--checkpoint", str(run / "final"), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx")]) == 0
    out = subprocess.run([sys.executable, "-c", "import onnx,sys; m=onnx.load(sys.argv[1]); "
                          "print(sorted(o.name for o in m.graph.output))", str(tmp_path / "m.onnx")],
                         capture_output=True, text=True, check=True).stdout
    assert "rad" in out


def test_distil_logs_fidelity_on_the_validation_split_every_epoch(pack, tmp_path):
    """Issue 15 item 3: per head, R² and cosine against the teacher on held-out (val) images and
    patches after every epoch, in OUT/fidelity.csv; centred targets are kept in the head."""
    import csv

    from leader.datasets.splits import assign_splits
    from leader.models.student import load_model
    from leader.recipe import distil

    _, m = pack
    m = assign_splits(m, val=0.3, test=0.0, seed=0, respect_official=False)
    cfg = load_config("demo-quick", ["student.img_size=32", "student.backbone=test_vit", "student.backbone_kwargs={}",
                                     "stage1.epochs=2", "stage2.epochs=1", "stage1.batch_size=4",
                                     "stage2.batch_size=4", "device=cpu", "precision=fp32",
                                     "teachers.disease.target_norm=center"])
    t = {"disease": _teacher("disease", 6, 1), "anatomy": _teacher("anatomy", 5, 2)}
    final = distil(cfg, t, tmp_path / "run", manifest=m, say=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "fidelity.csv")))
    got = {(r["stage"], r["epoch"], r["head"], r["kind"]) for r in rows}
    assert {("1", "1", "disease", "image"), ("1", "2", "disease", "image"), ("2", "1", "anatomy", "patch"),
            ("2", "1", "disease", "image")} <= got
    assert not any(k[0] == "1" and k[2] == "anatomy" for k in got)  # stage 1 trains the disease head only
    assert all(-1e6 < float(r["r2"]) <= 1 and -1 <= float(r["cos"]) <= 1 for r in rows)
    head = load_model(final).heads["disease"]
    assert head.normalised and not load_model(final).heads["anatomy"].normalised  # centring kept with the head
    assert torch.all(head.target_scale == 1)
