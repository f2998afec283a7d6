"""The COVID-19 image data collection (ieee8023/covid-chestxray-dataset) as published.

Reached through :func:`leader.datasets.read_covid_metadata` (a ``metadata.csv`` with a
``filename`` column); the format, the label table, the duplicate-row rule and the anatomy
annotations are documented in :mod:`leader.datasets.covid`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from leader.errors import BoxError, ImageReadError, ManifestError
from leader.manifest import Box, Manifest, make_manifest, normalize_view

from ._common import (IMAGE_SUFFIXES, UnknownLabelWarning, check_on_error, coco_image, coco_objects, json_id,
                      json_size, load_coco, read_size, read_sizes, read_utf8_or_latin1, record_note)
from .frames import aspect_differs, frame_scale, map_xywh

__all__ = ["read_ieee8023", "ieee8023_finding_labels", "IEEE8023_FINDINGS", "IEEE8023_LABELS", "DATASET"]

DATASET = "covid-ieee8023"

#: Label columns of the collection, in order.
IEEE8023_LABELS = ("COVID-19", "Pneumonia", "Viral Pneumonia", "Bacterial Pneumonia", "Fungal Pneumonia", "ARDS",
                   "Tuberculosis")

#: Flat ``finding`` values of the published metadata (lower case) -> hierarchical path of
#: the later releases. Hierarchical values (``Pneumonia/...``) are used as they are.
IEEE8023_FINDINGS: dict[str, str] = {
    "covid-19": "Pneumonia/Viral/COVID-19",
    "covid19": "Pneumonia/Viral/COVID-19",
    "sars": "Pneumonia/Viral/SARS",
    "mers": "Pneumonia/Viral/MERS-CoV",
    "mers-cov": "Pneumonia/Viral/MERS-CoV",
    "influenza": "Pneumonia/Viral/Influenza",
    "varicella": "Pneumonia/Viral/Varicella",
    "herpes": "Pneumonia/Viral/Herpes",
    "herpes pneumonia": "Pneumonia/Viral/Herpes",
    "viral": "Pneumonia/Viral",
    "pneumocystis": "Pneumonia/Fungal/Pneumocystis",
    "aspergillosis": "Pneumonia/Fungal/Aspergillosis",
    "candida": "Pneumonia/Fungal/Candida",
    "fungal": "Pneumonia/Fungal",
    "streptococcus": "Pneumonia/Bacterial/Streptococcus",
    "klebsiella": "Pneumonia/Bacterial/Klebsiella",
    "legionella": "Pneumonia/Bacterial/Legionella",
    "e.coli": "Pneumonia/Bacterial/E.Coli",
    "mycoplasma": "Pneumonia/Bacterial/Mycoplasma",
    "mycoplasma bacterial pneumonia": "Pneumonia/Bacterial/Mycoplasma",
    "chlamydophila": "Pneumonia/Bacterial/Chlamydophila",
    "staphylococcus": "Pneumonia/Bacterial/Staphylococcus",
    "mrsa": "Pneumonia/Bacterial/Staphylococcus/MRSA",
    "nocardia": "Pneumonia/Bacterial/Nocardia",
    "bacterial": "Pneumonia/Bacterial",
    "lipoid": "Pneumonia/Lipoid",
    "aspiration": "Pneumonia/Aspiration",
    "pneumonia": "Pneumonia",
    "ards": "ARDS",
    "tuberculosis": "Tuberculosis",
    "no finding": "No Finding",
}
_UNKNOWN = {"", "todo", "unknown"}
_TYPES = {"viral": "Viral Pneumonia", "bacterial": "Bacterial Pneumonia", "fungal": "Fungal Pneumonia"}
_OTHER_TYPES = {"lipoid", "aspiration"}  # named, non-infectious pneumonia types


def _path_of(part: str) -> str | None:
    p = part.strip()
    if p.lower() in _UNKNOWN:
        return None
    if "/" in p:
        return "/".join(x.strip() for x in p.split("/"))
    return IEEE8023_FINDINGS.get(p.lower())


def ieee8023_finding_labels(finding) -> tuple[dict[str, float], bool, bool]:
    """``finding`` -> ``(labels, normal, known)`` per the table of :mod:`leader.datasets.covid`.

    ``labels`` maps every name of :data:`IEEE8023_LABELS` to 1 / 0 / NaN; ``normal`` is True
    for ``No Finding``; ``known`` is False when a (non-blank, non-``todo``/``Unknown``) value
    is not in the vocabulary (then every label is NaN). Several findings are separated by
    commas (``COVID-19, ARDS``); flat and hierarchical (``Pneumonia/Viral/COVID-19``) values
    are both accepted, case-insensitively.
    """
    nan = float("nan")
    labels = {k: nan for k in IEEE8023_LABELS}
    if finding is None or (isinstance(finding, float) and math.isnan(finding)):
        return labels, False, True
    parts = [x for x in str(finding).split(",") if x.strip()]
    paths = []
    for part in parts:
        if part.strip().lower() in _UNKNOWN:
            continue
        p = _path_of(part)
        if p is None:
            return labels, False, False
        paths.append(p)
    if not paths:
        return labels, False, True
    levels = [[x.lower() for x in p.split("/")] for p in paths]
    if all(lv[0] == "no finding" for lv in levels):
        return {k: 0.0 for k in IEEE8023_LABELS}, True, True
    if any(lv[0] not in ("pneumonia", "ards", "tuberculosis", "no finding") for lv in levels):
        return labels, False, False
    pneu = [lv for lv in levels if lv[0] == "pneumonia"]
    labels["COVID-19"] = 1.0 if any("covid-19" in lv for lv in levels) else 0.0
    if pneu:
        labels["Pneumonia"] = 1.0
        named = {lv[1] for lv in pneu if len(lv) > 1}
        for key, col in _TYPES.items():
            if key in named:
                labels[col] = 1.0
            elif named & (set(_TYPES) | _OTHER_TYPES):
                labels[col] = 0.0
    for key, col in (("ards", "ARDS"), ("tuberculosis", "Tuberculosis")):
        if any(lv[0] == key for lv in levels):
            labels[col] = 1.0
    return labels, False, True


def _records(meta: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(start line, row dict)`` of every record (quoted fields may span lines)."""
    text = read_utf8_or_latin1(meta)  # the upstream file is Latin-1
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{meta}: empty metadata CSV") from None
    except csv.Error as e:
        raise ManifestError(f"{meta}: line 1: cannot parse the header: {e}") from None
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ManifestError(f"{meta}: line {start}: cannot parse: {e}") from None
        if not any(f.strip() for f in fields):
            continue
        if len(fields) > len(header) and any(f.strip() for f in fields[len(header):]):
            raise ManifestError(f"{meta}: line {start}: {len(fields)} fields, more than the header "
                                f"({len(header)})")
        fields = fields + [""] * (len(header) - len(fields))
        rows.append((start, {h: fields[k].strip() for k, h in enumerate(header)}))
    return header, rows


def _float(v: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")


def _under_annotations(p: Path, root: Path) -> bool:
    try:
        parts = p.resolve().relative_to(root.resolve()).parts[:-1]
    except ValueError:
        parts = ()
    return any(x.lower() == "annotations" for x in parts)


def _mask_dirs(root: Path, names: tuple[str, ...]) -> list[Path]:
    out = []
    for base in (root / "annotations", root):
        for n in names:
            d = base / n
            if d.is_dir():
                out.append(d)
    return out


def _find_masks(root: Path, filenames: list[str]) -> tuple[list[str | None], list[str | None]]:
    """Manual (V7 Labs) and generated (lungVAE) lung-mask paths per file name."""
    manual: dict[str, str] = {}
    for d in _mask_dirs(root, ("v7labs-lungs", "semantic_masks_v7labs_lungs")):
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            if e.is_file():
                manual.setdefault(e.name, e.path)  # torchxrayvision: <file name>
                manual.setdefault(os.path.splitext(e.name)[0], e.path)  # real-cxr-large: <stem>.png
    generated: dict[str, str] = {}
    for d in _mask_dirs(root, ("lungVAE-masks",)):
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            if e.is_file() and e.name.endswith("_mask.png"):
                generated.setdefault(e.name[: -len("_mask.png")], e.path)
    man = [manual.get(f) or manual.get(os.path.splitext(f)[0]) for f in filenames]
    gen = [generated.get(os.path.splitext(f)[0]) for f in filenames]
    return man, gen


def _annotation_file(root: Path, name: str, read: Callable[[Path], dict], filenames: Sequence[str], meta: Path,
                     what: str) -> tuple[Path | None, dict]:
    """``(path, read(path))`` of ``annotations/<name>`` (or ``<name>``) under ``root``,
    ``(None, {})`` when neither exists; the keys (file names) that are not in ``filenames`` are recorded in one
    "annotation without image" note ("<name>: <n> <what> image(s) not in <metadata>")."""
    path = next((p for p in (root / "annotations" / name, root / name) if p.is_file()), None)
    if path is None:
        return None, {}
    out = read(path)
    orphans = sorted(set(out) - set(filenames))
    if orphans:
        record_note("annotation without image", DATASET, f"{path.name}: {len(orphans)} {what} image(s) not in "
                    f"{meta.name}", files=orphans)
    return path, out


def _lung_boxes(jp: Path) -> dict[str, dict]:
    """``{file_name: {"w", "h", "boxes": [(label, x, y, w, h, ann id)]}}`` of the lung-box JSON;
    null-coordinate annotations are left out with a note."""
    coco = load_coco(jp)
    cats = {}
    for k, c in enumerate(coco["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
            raise ManifestError(f"{jp}: categories[{k}] must be an object with a name, got {c!r}")
        cats[json_id(jp, f"categories[{k}].id", c.get("id"))] = " ".join(c["name"].split()).lower()
    by_id: dict = {}
    out: dict[str, dict] = {}
    for k, im in coco_objects(jp, coco, "images"):
        iid, fn = coco_image(jp, k, im)
        if iid in by_id:
            raise ManifestError(f"{jp}: duplicate image id {iid!r} ({fn})")
        info = {"w": json_size(jp, iid, "width", im.get("width")), "h": json_size(jp, iid, "height", im.get("height")),
                "boxes": [], "file": fn.strip()}
        by_id[iid] = info
        out[info["file"]] = info
    ignored = []
    for k, a in coco_objects(jp, coco, "annotations"):
        aid = a.get("id", f"#{k}")
        info = by_id.get(a.get("image_id"))
        if info is None:
            raise ManifestError(f"{jp}: annotation {aid!r} refers to unknown image_id {a.get('image_id')!r}")
        if a.get("category_id") not in cats:
            raise ManifestError(f"{jp}: annotation {aid!r} has unknown category_id {a.get('category_id')!r}")
        bb = a.get("bbox")
        if isinstance(bb, (list, tuple)) and len(bb) == 4 and all(v is None for v in bb):
            ignored.append((aid, info["file"]))
            continue
        if not isinstance(bb, (list, tuple)) or len(bb) != 4 or any(isinstance(v, bool) for v in bb):
            raise ManifestError(f"{jp}: annotation {aid!r} ({info['file']}): bbox must be [x, y, w, h], got {bb!r}")
        try:
            x, y, w, h = (float(v) for v in bb)
        except (TypeError, ValueError):
            raise ManifestError(f"{jp}: annotation {aid!r} ({info['file']}): non-numeric bbox {bb!r}") from None
        if info["w"] is None or info["h"] is None:
            raise ManifestError(f"{jp}: annotation {aid!r} ({info['file']}): the image has no width/height, so "
                                "its box frame is unknown")
        info["boxes"].append((cats[a["category_id"]], x, y, w, h, aid))
    if ignored:
        files = sorted({f for _, f in ignored})
        record_note("annotation ignored", DATASET,
                    f"{jp.name}: {len(ignored)} lung box(es) with null coordinates ignored ({', '.join(files)})",
                    annotations=[str(a) for a, _ in ignored], files=files)
        warnings.warn(f"{DATASET}: {jp}: {len(ignored)} lung box(es) with null coordinates ignored "
                      f"(annotation ids {[a for a, _ in ignored]}, {files})", UserWarning, stacklevel=3)
    return out


def _severity(path: Path) -> dict[str, tuple[float, float]]:
    """``{filename: (geographic extent 0-8, opacity 0-6)}``; ``#`` lines are comments."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read severity scores: {e}") from None
    out: dict[str, tuple[float, float]] = {}
    header = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = next(csv.reader([line]))
        except csv.Error as e:
            raise ManifestError(f"{path}: line {line_no}: cannot parse: {e}") from None
        if header is None:
            header = [f.strip() for f in fields]
            if header[:3] != ["filename", "geographic_mean", "opacity_mean"]:
                raise ManifestError(f"{path}: line {line_no}: expected header 'filename,geographic_mean,"
                                    f"opacity_mean', got {line!r}")
            continue
        if len(fields) < 3:
            raise ManifestError(f"{path}: line {line_no}: expected filename,geographic_mean,opacity_mean, got {line!r}")
        fn, g, o = fields[0].strip(), _float(fields[1]), _float(fields[2])
        if not fn or not (0 <= g <= 8) or not (0 <= o <= 6):
            raise ManifestError(f"{path}: line {line_no}: {fn!r}: scores must be geographic 0-8 and opacity 0-6, "
                                f"got {fields[1]!r}, {fields[2]!r}")
        out[fn] = (g, o)
    return out


class _UF:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.rank: dict[str, int] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.rank.get(ra, 0) > self.rank.get(rb, 0):  # the earlier (smaller rank) patient wins
            ra, rb = rb, ra
        self.parent[rb] = ra


def read_ieee8023(root: Path, meta: Path, *, check_files: bool = True, on_error: str = "raise") -> Manifest:
    """Read the COVID-19 image data collection under ``root`` from ``meta`` (its
    ``metadata.csv``); dataset ``covid-ieee8023``. See :mod:`leader.datasets.covid` for the
    columns, labels, duplicate rule and anatomy annotations.

    With ``check_files=False`` no image or mask file is opened (mask folders are listed);
    width/height are then the annotated size from the lung-box JSON where it has the image
    (boxes in that frame: images stored as published) and unknown elsewhere.

    Raises:
        ManifestError: no ``patientid`` / ``finding`` / ``filename`` column, an empty
            ``filename`` or ``patientid``, a malformed JSON or severity CSV (names the file
            and line or annotation).
        BoxError: a lung box that is invalid in its stored image.
        ImageReadError: (``check_files=True``, ``on_error="raise"``) an unreadable image or
            lung mask (message starts with its path).
    """
    check_on_error(on_error)
    header, rows = _records(meta)
    miss = [c for c in ("patientid", "finding", "filename") if c not in header]
    if miss:
        raise ManifestError(f"{meta}: missing column(s) {miss}; have {header}")

    # ---- radiographs only, never annotation files ----------------------------------------
    kept: list[tuple[int, dict, Path]] = []
    not_xray, in_ann = [], []
    for line, r in rows:
        if not r["filename"]:
            raise ManifestError(f"{meta}: line {line}: empty 'filename'")
        if not r["patientid"]:
            raise ManifestError(f"{meta}: line {line}: empty 'patientid' ({r['filename']})")
        mod = r.get("modality", "")
        if mod and re.sub(r"[^a-z]", "", mod.lower()) not in ("xray", "cr", "dx"):
            not_xray.append((line, r["filename"], mod))
            continue
        p = root / (r.get("folder") or "images") / r["filename"]
        if _under_annotations(p, root):
            in_ann.append((line, r["filename"]))
            continue
        kept.append((line, r, p))
    if not_xray:
        record_note("not a radiograph", DATASET, f"{meta.name}: {len(not_xray)} row(s) with modality other than "
                    f"X-ray left out", lines=[x[0] for x in not_xray], files=[x[1] for x in not_xray])
    if in_ann:
        record_note("annotation listed as image", DATASET, f"{meta.name}: {len(in_ann)} row(s) naming a file "
                    f"under annotations/ left out", lines=[x[0] for x in in_ann], files=[x[1] for x in in_ann])
        warnings.warn(f"{DATASET}: {meta}: {len(in_ann)} row(s) name a file under annotations/, which is not a "
                      f"radiograph; left out (lines {[x[0] for x in in_ann][:5]})", UserWarning, stacklevel=3)

    # ---- duplicate rows: first row wins, patients merged --------------------------------
    uf = _UF()
    for k, (_, r, _) in enumerate(kept):
        pid = r["patientid"]
        if pid not in uf.parent:
            uf.rank[pid] = len(uf.rank)  # order of first appearance
        uf.find(pid)
    first: dict[str, int] = {}
    dropped: dict[str, list[int]] = {}
    for k, (_, r, _) in enumerate(kept):
        fn = r["filename"]
        if fn in first:
            dropped.setdefault(fn, []).append(k)
            uf.union(kept[first[fn]][1]["patientid"], r["patientid"])
        else:
            first[fn] = k
    for fn, ks in dropped.items():
        k0 = first[fn]
        line0, r0, _ = kept[k0]
        differ = any(kept[k][1].get(c, "") != r0.get(c, "") for k in ks for c in ("finding", "view"))
        record_note("duplicate row", DATASET,
                    f"{meta.name}: {fn} listed {len(ks) + 1} times; kept line {line0} (patient {r0['patientid']}), "
                    f"dropped line(s) {[kept[k][0] for k in ks]} (patient(s) {[kept[k][1]['patientid'] for k in ks]})"
                    + ("; the rows disagree on finding/view" if differ else ""),
                    file=fn, kept_line=line0, kept_patient=r0["patientid"],
                    dropped_lines=[kept[k][0] for k in ks], dropped_patients=[kept[k][1]["patientid"] for k in ks],
                    rows_disagree=differ)
    if dropped:
        warnings.warn(f"{DATASET}: {meta}: {len(dropped)} file(s) listed more than once; each indexed once from "
                      f"its first row and their patient ids merged (first: {sorted(dropped)[:3]})",
                      UserWarning, stacklevel=3)
    uniq = [kept[k] for k in sorted(first.values())]
    groups: dict[str, list[str]] = {}
    for pid in uf.parent:
        groups.setdefault(uf.find(pid), []).append(pid)

    # ---- ids, paths, sizes ------------------------------------------------------------
    filenames = [r["filename"] for _, r, _ in uniq]
    paths = [p for _, _, p in uniq]
    stems = [os.path.splitext(f)[0] for f in filenames]
    ids = [f"{DATASET}/{s}" for s in stems]
    if len(set(ids)) != len(ids):
        ids = [f"{DATASET}/{f}" for f in filenames]
    bad_suffix = [f for f in filenames if os.path.splitext(f)[1].lower() not in IMAGE_SUFFIXES]
    if bad_suffix:
        raise ManifestError(f"{meta}: 'filename' without an image suffix: {bad_suffix[:5]}")
    where = [f"{meta}: line {line}" for line, _, _ in uniq]
    if check_files:
        infos, _, _ = read_sizes(DATASET, root, ids, paths, on_error, where)
    else:
        infos = [None] * len(ids)

    # ---- anatomy annotations ------------------------------------------------------------
    jp, lung = _annotation_file(root, "imageannotation_ai_lung_bounding_boxes.json", _lung_boxes, filenames, meta,
                                "annotated")
    man, gen = _find_masks(root, filenames)
    _, severity = _annotation_file(root, "covid-severity-scores.csv", _severity, filenames, meta, "scored")

    records, unknown, skewed = [], [], []
    bad_masks = []
    for k, (line, r, p) in enumerate(uniq):
        if check_files and infos[k] is None:
            continue
        fn = filenames[k]
        ann = lung.get(fn)
        if infos[k] is not None:
            sw, sh, sp = infos[k].width, infos[k].height, infos[k].pixel_spacing
        elif ann is not None:
            sw, sh, sp = ann["w"], ann["h"], None
        else:
            sw = sh = sp = None
        anatomy = None
        if ann is not None and ann["boxes"]:
            scale = frame_scale((sw, sh), (ann["w"], ann["h"]))
            if aspect_differs((sw, sh), (ann["w"], ann["h"])):
                skewed.append(f"{fn} (annotated {ann['w']}x{ann['h']}, stored {sw}x{sh})")
            anatomy = []
            for label, x, y, bw, bh, aid in ann["boxes"]:
                try:
                    anatomy.append(Box(*map_xywh(x, y, bw, bh, scale), label).to_dict())
                except BoxError as e:
                    raise BoxError(f"{jp}: annotation {aid!r} ({fn}): {e}") from None
        mask = man[k]
        if mask is not None and check_files:
            try:
                read_size(mask)
            except ImageReadError as e:
                if on_error == "raise":
                    raise
                bad_masks.append(f"{fn}: {e}")
                mask = None
        labels, normal, known = ieee8023_finding_labels(r["finding"])
        if not known:
            unknown.append(f"line {line}: {r['finding']!r}")
        pid = uf.find(r["patientid"])
        aliases = sorted(set(groups[pid]) - {pid}, key=lambda x: uf.rank.get(x, 0))
        sv = severity.get(fn, (float("nan"), float("nan")))
        records.append({
            "id": ids[k], "path": str(p), "dataset": DATASET, "split": "train", "patient_id": pid,
            "width": sw, "height": sh, "pixel_spacing": sp, "view": normalize_view(r.get("view")),
            "normal": normal, "labels": labels,
            "finding": r["finding"] or None, "view_detail": r.get("view") or None,
            "offset": _float(r.get("offset", "")), "sex": r.get("sex") or None, "age": _float(r.get("age", "")),
            "license": r.get("license") or None, "url": r.get("url") or None,
            "patient_id_aliases": ",".join(aliases),
            "anatomy_boxes": anatomy, "lung_mask": mask, "lung_mask_generated": gen[k],
            "geographic_extent": sv[0], "opacity": sv[1],
        })
    if unknown:
        warnings.warn(f"{DATASET}: {meta}: {len(unknown)} finding value(s) not in the vocabulary (labels NaN): "
                      f"{unknown[:5]}", UnknownLabelWarning, stacklevel=3)
    if skewed:
        record_note("annotation frame", DATASET, f"{len(skewed)} image(s) whose stored aspect ratio differs from the "
                    f"annotated lung-box frame by > 2 % (boxes scaled per axis)", files=skewed)
    if bad_masks:
        record_note("annotation ignored", DATASET, f"{len(bad_masks)} unreadable lung mask(s) ignored",
                    files=bad_masks)
        warnings.warn(f"{DATASET}: {len(bad_masks)} unreadable lung mask(s) ignored: {bad_masks[:3]}",
                      UserWarning, stacklevel=3)
    m = make_manifest(records)
    if len(m):
        # pin the extra columns' dtypes (all-None columns would otherwise be object/float)
        m.df["offset"] = m.df["offset"].astype(np.float64)
        m.df["age"] = m.df["age"].astype(np.float64)
        m.df["geographic_extent"] = m.df["geographic_extent"].astype(np.float64)
        m.df["opacity"] = m.df["opacity"].astype(np.float64)
    return m
