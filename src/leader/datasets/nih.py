"""NIH ChestX-ray14 (ChestX-ray8) reader.

Source: Wang et al., "ChestX-ray8", CVPR 2017, and the NIH Clinical Center release
(``Data_Entry_2017.csv`` / ``Data_Entry_2017_v2020.csv``, ``BBox_List_2017.csv``,
``train_val_list.txt``, ``test_list.txt``). Field report BR-06 documents the box-file quirks.

Files understood
----------------
``Data_Entry_2017*.csv[.gz]``
    One row per image. Columns are located by header name (``Image Index``, ``Finding
    Labels``, ``Patient ID``, ``View Position``, ``OriginalImage[Width,Height]``,
    ``OriginalImagePixelSpacing[x,y]``); the bracketed names contain a comma and so span
    two CSV fields each, which is handled. ``Finding Labels`` is ``|``-separated.
``BBox_List_2017.csv[.gz]``
    Header ``Image Index,Finding Label,Bbox [x,y,w,h],,,``. Read *positionally*: field 0
    image, 1 label, 2-5 x, y, w, h; trailing empty fields are ignored. ``x, y`` is the
    top-left corner, all four in pixels of the 1024x1024 NIH PNG. The label ``Infiltrate``
    is renamed ``Infiltration`` (the Data_Entry spelling).
``train_val_list.txt`` / ``test_list.txt``
    Official split (one file name per line); without them every image is ``train``.

Output (one row per Data_Entry image)
-------------------------------------
* ``id`` ``"nih/<stem>"``, ``patient_id`` = ``Patient ID`` as a string, ``view`` from
  ``View Position`` (``PA``/``AP``; blank -> ``UNKNOWN``).
* 14 labels (:data:`NIH_LABELS`), 1/0 for every image (NIH labels are never unknown);
  ``No Finding`` gives ``normal=True`` and all 14 labels 0.
* ``boxes`` in pixels of the **stored** image: ``(x, y, x+w, y+h)`` scaled by
  ``(stored_w / 1024, stored_h / 1024)``.
* ``pixel_spacing`` (mm per stored pixel) = ``OriginalImagePixelSpacing x`` ×
  ``OriginalImage width`` / ``stored width``: the 1024 PNG is a resize of the full
  hospital original, so the physical field of view is preserved. NaN when the spacing
  columns are absent.

Images are looked up in ``root/images*`` (e.g. ``images/`` at 1024 px and
``images-512/``) and ``root/images_*/images`` (the NIH download layout); the first
folder holding a file name wins. With ``check_files=True`` missing images are skipped
(one :class:`~leader.datasets._common.MissingFileWarning`) and width/height come from
the image header. With ``check_files=False`` no image is opened or stat'ed: the stored
size is ``stored_size`` (default 1024, the NIH release size).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from leader.errors import BoxError, ManifestError
from leader.manifest import LABEL_PREFIX, Box, Manifest, make_manifest

from .frames import frame_scale
from ._common import (_decode_utf8, _read_bytes, as_root, check_csv_rows, check_on_error, find_first, find_required,
                      read_sizes)

__all__ = ["read_nih", "NIH_LABELS", "NIH_BOX_LABEL_MAP", "read_bbox_list"]

#: The 14 ChestX-ray14 findings, in the NIH paper's order.
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"

#: BBox_List_2017 spellings that differ from Data_Entry.
NIH_BOX_LABEL_MAP = {"Infiltrate": "Infiltration"}

NIH_FRAME = 1024.0  # NIH boxes and the released PNGs are 1024x1024


def _read_text(path: Path, what: str, check_rows: bool = False) -> str:
    """The UTF-8 text of a ``.csv`` / ``.csv.gz`` (ManifestError naming the file, and the
    line for invalid UTF-8 or, with ``check_rows``, a wrong number of fields)."""
    data = _read_bytes(path, what)
    text = _decode_utf8(path, data, what)
    if check_rows:
        check_csv_rows(path, data, what)
    return text


def _find_col(fields: list[str], prefix: str) -> int | None:
    p = prefix.lower()
    for i, f in enumerate(fields):
        if f.strip().lower().startswith(p):
            return i
    return None


def _read_data_entry(path: Path) -> pd.DataFrame:
    """Data_Entry as a DataFrame with normalised columns ``image, findings, patient,
    view, orig_w, spacing_x`` (the last four may be absent -> NaN)."""
    text = _read_text(path, "NIH Data_Entry CSV", check_rows=True)
    try:
        header = next(csv.reader(io.StringIO(text, newline="")), None)
    except csv.Error as e:
        raise ManifestError(f"{path}: line 1: cannot parse the header: {e}") from None
    if not header:
        raise ManifestError(f"{path}: empty Data_Entry file")
    ci = {
        "image": _find_col(header, "Image Index"),
        "findings": _find_col(header, "Finding Label"),
        "patient": _find_col(header, "Patient ID"),
        "view": _find_col(header, "View Position"),
        "orig_w": _find_col(header, "OriginalImage[Width"),
        "spacing_x": _find_col(header, "OriginalImagePixelSpacing[x"),
    }
    if ci["image"] is None or ci["findings"] is None:
        raise ManifestError(
            f"{path}: line 1: header lacks 'Image Index' / 'Finding Labels' columns: {header!r}"
        )
    use = {k: v for k, v in ci.items() if v is not None}
    names = list(range(len(header)))
    str_cols = {use[k] for k in ("image", "findings", "patient", "view") if k in use}
    _, _, body = text.partition("\n")
    try:
        if not body.strip():  # header only (pandas' skiprows=1 trips over that)
            df = pd.DataFrame({c: pd.Series([], dtype=object) for c in sorted(use.values())})
        else:
            df = pd.read_csv(
                io.StringIO(text),
                header=None,
                skiprows=1,
                names=names,
                usecols=sorted(use.values()),
                dtype={c: str for c in str_cols},
                keep_default_na=False,
                na_values={c: [""] for c in names},
                skip_blank_lines=True,
            )
    except (pd.errors.ParserError, ValueError) as e:
        raise ManifestError(f"{path}: cannot parse Data_Entry: {e}") from None
    out = pd.DataFrame({k: df[v] for k, v in use.items()})
    for k in ("patient", "view", "orig_w", "spacing_x"):
        if k not in out:
            out[k] = np.nan
    # line numbers for error messages: header is line 1
    out["line"] = np.arange(2, len(out) + 2)
    bad = out["image"].isna()
    if bad.any():
        raise ManifestError(f"{path}: line {int(out['line'][bad].iloc[0])}: empty 'Image Index'")
    dup = out["image"].duplicated()
    if dup.any():
        raise ManifestError(
            f"{path}: line {int(out['line'][dup].iloc[0])}: duplicate image "
            f"{out['image'][dup].iloc[0]!r}"
        )
    for k in ("orig_w", "spacing_x"):
        try:
            out[k] = pd.to_numeric(out[k], errors="raise").astype(float)
        except (ValueError, TypeError):
            bad = pd.to_numeric(out[k], errors="coerce").isna() & out[k].notna()
            raise ManifestError(
                f"{path}: line {int(out['line'][bad].iloc[0])}: non-numeric {k} "
                f"{out[k][bad].iloc[0]!r}"
            ) from None
    return out


def read_bbox_list(path: str | os.PathLike) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """Parse ``BBox_List_2017.csv`` -> ``{image: [(label, x, y, w, h), ...]}``.

    Coordinates are floats in the 1024-px NIH frame, ``(x, y)`` top-left. Labels are
    mapped with :data:`NIH_BOX_LABEL_MAP`. Trailing empty fields are ignored.

    Raises:
        ManifestError: unreadable file or invalid UTF-8 (names the line), a row with fewer or
            more than 6 non-empty-trailing fields, an empty image/label, a missing,
            non-numeric or non-finite coordinate, a non-positive size (names the file, line
            and image).
    """
    path = Path(path)
    out: dict[str, list[tuple[str, float, float, float, float]]] = {}
    reader = csv.reader(io.StringIO(_read_text(path, "NIH BBox_List CSV"), newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ManifestError(f"{path}: line {reader.line_num}: cannot parse: {e}") from None
        lineno = reader.line_num
        if lineno == 1 and row and row[0].strip().lower().startswith("image index"):
            continue
        while row and not row[-1].strip():
            row = row[:-1]
        if not row:
            continue
        img = row[0].strip()
        if len(row) < 6:
            raise ManifestError(
                f"{path}: line {lineno}: image {img!r}: missing coordinate "
                f"(expected image,label,x,y,w,h; got {len(row)} fields: {row!r})"
            )
        if len(row) > 6:
            raise ManifestError(
                f"{path}: line {lineno}: image {img!r}: {len(row)} fields, expected "
                f"image,label,x,y,w,h (wrong column count: {row!r})"
            )
        label = row[1].strip()
        if not img or not label:
            raise ManifestError(f"{path}: line {lineno}: empty image name or label: {row!r}")
        try:
            x, y, w, h = (float(v) for v in row[2:6])
        except ValueError:
            raise ManifestError(
                f"{path}: line {lineno}: image {img!r}: missing or non-numeric coordinate "
                f"in {row[2:6]!r}"
            ) from None
        if not all(map(math.isfinite, (x, y, w, h))):
            raise ManifestError(
                f"{path}: line {lineno}: image {img!r}: non-finite coordinate in {row[2:6]!r}"
            )
        if w <= 0 or h <= 0:
            raise ManifestError(
                f"{path}: line {lineno}: image {img!r}: box has non-positive size w={w:g} h={h:g}"
            )
        out.setdefault(img, []).append((NIH_BOX_LABEL_MAP.get(label, label), x, y, w, h))
    return out


def _image_dirs(root: Path) -> list[Path]:
    dirs = [d for d in sorted(root.glob("images*")) if d.is_dir()]
    dirs += [d for d in sorted(root.glob("images_*/images")) if d.is_dir()]
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _locate(root: Path, names: Sequence[str]) -> list[str]:
    """Path of each image name (first image folder holding it; else ``root/images/name``)."""
    found: dict[str, str] = {}
    for d in _image_dirs(root):
        with os.scandir(d) as it:
            for e in it:
                if e.name not in found:
                    found[e.name] = os.path.join(d, e.name)
    default = str(root / "images")
    return [found.get(n) or os.path.join(default, n) for n in names]


def _read_list(path: Path | None) -> set[str]:
    if path is None:
        return set()
    text = _read_text(path, "NIH split list")
    return {ln.strip() for ln in text.splitlines() if ln.strip()}


def read_nih(
    root: str | os.PathLike,
    data_entry: str | os.PathLike | None = None,
    bbox_list: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    stored_size: int | tuple[int, int] | None = None,
    test_list: str | os.PathLike | None = None,
    on_error: str = "raise",
) -> Manifest:
    """Read NIH ChestX-ray14 under ``root`` into a :class:`Manifest` (dataset ``nih``).

    Args:
        root: folder holding ``Data_Entry_2017*.csv[.gz]`` (in it or one folder down),
            optionally ``BBox_List_2017.csv[.gz]``, split lists and ``images*/`` folders.
        data_entry, bbox_list: explicit metadata files (override the search). Pass
            ``bbox_list=False`` to ignore boxes.
        check_files: see the module docstring.
        stored_size: stored image size (``int`` or ``(width, height)``) assumed when
            ``check_files=False``; default 1024.
        test_list: explicit ``test_list.txt`` (default: searched in ``root`` and one folder
            down); its images get ``split="test"``, all others ``train``.
        on_error: ``"raise"`` or ``"skip"`` for images whose header cannot be read.

    Raises:
        ManifestError: metadata missing or malformed (names file and line: invalid UTF-8,
            wrong column count, empty or duplicate ``Image Index``, non-numeric size or
            spacing, bad box row), an unknown finding name in ``Finding Labels``.
        BoxError: a box that is invalid in its stored image.
        ImageReadError: (``check_files=True``, ``on_error="raise"``) an unreadable,
            truncated or corrupt image (message starts with its path).
    """
    check_on_error(on_error)
    root = as_root(root)
    if data_entry is None:
        cands = find_required(root, ["Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz"], "Data_Entry_2017*.csv[.gz]",
                              max_depth=1)
        # prefer the shallowest, then the newest release (v2020 sorts after the 2017 file),
        # then the uncompressed copy
        depth0 = min(len(p.relative_to(root).parts) for p in cands)
        cands = [p for p in cands if len(p.relative_to(root).parts) == depth0]
        cands.sort(key=lambda p: (p.name.lower().replace(".gz", ""), p.suffix.lower() != ".gz"))
        data_entry = cands[-1]
    data_entry = Path(data_entry)
    if bbox_list is None:
        cands = find_first(root, ["BBox_List_2017.csv", "BBox_List_2017.csv.gz"], max_depth=1)
        bbox_list = cands[0] if cands else None

    de = _read_data_entry(data_entry)
    n = len(de)

    # ---- labels (vectorised over unique Finding Labels strings) ----------------------
    findings = de["findings"].fillna("").astype(str)
    uniq = pd.unique(findings)
    tokens_of = {u: {t.strip() for t in u.split("|") if t.strip()} for u in uniq}
    known = set(NIH_LABELS) | {NO_FINDING}
    for u, toks in tokens_of.items():
        unknown = toks - known
        if unknown or not toks:
            line = int(de["line"][findings == u].iloc[0])
            what = f"unknown finding(s) {sorted(unknown)}" if unknown else "empty 'Finding Labels'"
            raise ManifestError(f"{data_entry}: line {line}: {what}")
        if NO_FINDING in toks and len(toks) > 1:
            line = int(de["line"][findings == u].iloc[0])
            raise ManifestError(f"{data_entry}: line {line}: 'No Finding' combined with findings {u!r}")
    codes, uniq_idx = pd.factorize(findings)
    label_mat = np.zeros((len(uniq_idx), len(NIH_LABELS)), dtype=np.float32)
    normal_u = np.zeros(len(uniq_idx), dtype=bool)
    for k, u in enumerate(uniq_idx):
        toks = tokens_of[u]
        normal_u[k] = NO_FINDING in toks
        for j, name in enumerate(NIH_LABELS):
            if name in toks:
                label_mat[k, j] = 1.0
    labels = label_mat[codes]
    normal = normal_u[codes]

    # ---- paths and stored size ------------------------------------------------------
    names = de["image"].astype(str).tolist()
    paths = _locate(root, names)
    stems = [os.path.splitext(nm)[0] for nm in names]
    ids = ["nih/" + s for s in stems]
    keep = np.ones(n, dtype=bool)
    if check_files:
        infos, _, _ = read_sizes("nih", root, ids, paths, on_error)
        width = np.array([i.width if i else 0 for i in infos], dtype=np.int64)
        height = np.array([i.height if i else 0 for i in infos], dtype=np.int64)
        keep = np.array([i is not None for i in infos], dtype=bool)
    else:
        if stored_size is None:
            sw = sh = int(NIH_FRAME)
        elif isinstance(stored_size, (tuple, list)):
            sw, sh = int(stored_size[0]), int(stored_size[1])
        else:
            sw = sh = int(stored_size)
        width = np.full(n, sw, dtype=np.int64)
        height = np.full(n, sh, dtype=np.int64)

    spacing = de["spacing_x"].to_numpy(dtype=float) * de["orig_w"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        spacing = np.where(width > 0, spacing / np.maximum(width, 1), np.nan)

    # ---- split ----------------------------------------------------------------------
    split = np.full(n, "train", dtype=object)
    tl = [Path(test_list)] if test_list is not None else find_first(root, ["test_list.txt"], max_depth=1)
    if tl:
        test_names = _read_list(tl[0])
        split[de["image"].isin(test_names).to_numpy()] = "test"

    # ---- boxes ----------------------------------------------------------------------
    boxes: list[list[dict]] = [[] for _ in range(n)]
    if bbox_list:
        bbox_path = Path(bbox_list)
        per_image = read_bbox_list(bbox_path)
        pos = {nm: i for i, nm in enumerate(names)}
        orphan = sorted(set(per_image) - set(pos))
        if orphan:
            warnings.warn(
                f"nih: {len(orphan)} image(s) in {bbox_path} are not in {data_entry.name}; "
                f"their boxes are ignored (first: {orphan[:5]})",
                stacklevel=2,
            )
        for img, lst in per_image.items():
            i = pos.get(img)
            if i is None or not keep[i]:
                continue
            sx, sy = frame_scale((width[i], height[i]), (NIH_FRAME, NIH_FRAME))
            for label, x, y, w, h in lst:
                try:
                    b = Box(x * sx, y * sy, (x + w) * sx, (y + h) * sy, label)
                except BoxError as e:
                    raise BoxError(f"{bbox_path}: image {img!r}: {e}") from None
                boxes[i].append(b.to_dict())

    view = de["view"].astype(object).fillna("").astype(str).str.strip().str.upper()
    view = view.where(view != "", "UNKNOWN")
    patient = de["patient"].astype(object).where(de["patient"].notna(), pd.Series(stems, dtype=object))

    df = pd.DataFrame(
        {
            "id": ids,
            "path": paths,
            "dataset": "nih",
            "split": split,
            "patient_id": patient.astype(str).to_numpy(dtype=object),
            "width": pd.array(width, dtype="Int64"),
            "height": pd.array(height, dtype="Int64"),
            "pixel_spacing": spacing.astype(np.float64),
            "view": view.to_numpy(dtype=object),
            "normal": normal,
            "boxes": pd.Series(boxes, dtype=object),
            "landmarks": pd.Series([None] * n, dtype=object),
            "landmark_scheme": "",
        }
    )
    for j, name in enumerate(NIH_LABELS):
        df[LABEL_PREFIX + name] = labels[:, j]
    if not keep.all():
        df = df.loc[keep]
    if not len(df):
        return Manifest(df.reset_index(drop=True)) if len(df.columns) else make_manifest([])
    return Manifest(df)
