"""Dataset readers: each turns a dataset folder into a :class:`leader.manifest.Manifest`.

Every reader has the form ``read_X(root, ..., check_files=True, on_error="raise")``.

* ``check_files=True``: rows whose image file is missing are skipped with one
  :class:`MissingFileWarning` naming the count and the first ids; ``width``/``height``
  (and ``pixel_spacing`` when the header has it and the metadata does not) come from
  :func:`leader.io.verify_image` (header plus a structural check of the whole file --
  PNG CRCs, JPEG end marker, DICOM pixel data / transfer syntax / decoder, declared-size
  limit -- without decoding pixels). ``on_error="skip"`` also skips images that fail it
  (one :class:`UnreadableFileWarning` with the reasons); the default ``"raise"`` propagates
  :class:`leader.errors.ImageReadError` (fail fast). Every skipped image is recorded in the
  active :func:`collect_skipped` list (``leader data index`` writes it as
  ``<out>.skipped.json`` with :func:`skip_report`), and the index's notes (label gaps,
  duplicate-row resolutions, ignored annotations) in its ``notes``.
* ``check_files=False``: no image file is opened or stat'ed (folders may be listed to
  locate files); sizes come from metadata or the dataset's documented release size.

Registry: :data:`READERS` = ``{"nih", "tbx11k", "jsrt", "covid", "siim", "rsna", "folder",
"chexpert", "mimic", "padchest", "vindr", "chestx-det", "node21", "covidx", "shenzhen"}``;
:func:`read_dataset` reads one by name (``leader data index --dataset NAME``);
:func:`index_root` detects and reads every dataset under a root.

Modules: one per dataset (``nih``, ``chexpert``, ``mimic``, ``padchest``, ``vindr``,
``chestx_det``, ``node21``, ``covidx``, ``shenzhen`` (Shenzhen + Montgomery), ``tbx11k``,
``jsrt``, ``covid`` (COVID-19 image data collection (``covid_ieee8023``) / Figure1 /
Actualmed), ``siim``, ``rsna``, ``generic``), plus ``harmonise`` (shared vocabulary),
``splits`` (patient-level splits, nested label fractions, duplicate groups), ``views`` (PA /
AP / lateral filters), ``frames`` (published annotation frames -> stored pixels) and
``masks`` (:func:`row_mask`: the lung / pneumothorax mask of a manifest row from any source).

Harmonised label names
----------------------
Label columns are ``label:<Name>``; values 1 / 0 / NaN (unknown). Each reader keeps its
dataset's **own** vocabulary (e.g. CheXpert ``Pleural Effusion``, PadChest ``pleural
effusion``, VinDr ``Nodule/Mass``); :func:`harmonise` maps them onto
:data:`HARMONISED_LABELS` with the per-dataset table
:data:`~leader.datasets.harmonise.HARMONISED_MAP` (three-valued OR of the sources; a label a
dataset does not map is NaN, never 0). The full table is in ``docs/datasets.md``. The
original readers already use harmonised names:

==================================  ==========================================================
harmonised name                     source label(s) (selection; see HARMONISED_MAP)
==================================  ==========================================================
Atelectasis ... Hernia (NIH 14)     NIH findings; CheXpert/MIMIC (``Pleural Effusion`` ->
                                    ``Effusion``); PadChest synonyms; VinDr; ChestX-Det
Infiltration                        NIH ``Infiltration``; NIH box file ``Infiltrate``
Nodule                              NIH ``Nodule``; JSRT ``JPCLN`` cases (1) / ``JPCNN`` (0);
                                    NODE21; ChestX-Det ``Nodule``
Pneumonia                           NIH ``Pneumonia``; COVID finding ``Pneumonia`` or
                                    ``COVID-19`` (COVID-19 pneumonia); RSNA ``Target=1``
                                    ("Lung Opacity", boxes labelled ``Pneumonia``); COVIDx
Pneumothorax                        NIH ``Pneumothorax``; SIIM-ACR RLE mask present
Tuberculosis                        TBX11K: OR of the three TB categories (folder ``tb``
                                    without annotation entry: 1); Shenzhen / Montgomery
                                    ``_1`` files; PadChest ``tuberculosis``; VinDr
ActiveTuberculosis                  TBX11K category 1
ObsoletePulmonaryTuberculosis       TBX11K category 2
PulmonaryTuberculosis               TBX11K category 3 (no positives in train/val)
COVID-19                            Figure1 / Actualmed / ieee8023 finding ``COVID-19``; COVIDx
Enlarged Cardiomediastinum, Lung    CheXpert / MIMIC; Lung Opacity also VinDr and RSNA
Opacity, Lung Lesion, Support
Devices
Nodule/Mass                         NIH Nodule OR Mass; VinDr ``Nodule/Mass``; PadChest;
                                    ChestX-Det; NODE21 / JSRT nodules
Fracture                            CheXpert / MIMIC; PadChest and VinDr fracture terms;
                                    ChestX-Det
Aortic Enlargement, Calcification   VinDr (Calcification also ChestX-Det)
==================================  ==========================================================

``normal`` (not a label column) is True for NIH ``No Finding``, JSRT non-nodule cases,
TBX11K ``health`` images, COVID ``No finding``, RSNA class ``Normal``, CheXpert / MIMIC
``No Finding`` = 1, PadChest ``normal``, VinDr images with every label 0, ChestX-Det images
without boxes, COVIDx ``normal`` and Shenzhen / Montgomery ``_0`` files.

Dataset names (``dataset`` column / id prefix): ``nih``, ``tbx11k``, ``jsrt``,
``covid-ieee8023``, ``covid-figure1``, ``covid-actualmed``, ``siim``, ``rsna``, ``chexpert``, ``mimic``,
``padchest``, ``vindr``, ``chestx-det``, ``node21``, ``covidx``, ``shenzhen``,
``montgomery``, and the folder name for :func:`read_folder`.
"""

from __future__ import annotations

from ._common import (IndexNote, MissingFileWarning, SkipLog, SkippedItem, UnknownLabelWarning,
                      UnreadableFileWarning, UnreadableRowWarning, collect_skipped, skip_report)
from .chestx_det import CHESTX_DET_CLASSES, read_chestx_det
from .chexpert import CHEXPERT_LABELS, read_chexpert
from .covid import read_covid_metadata
from .covid_ieee8023 import IEEE8023_LABELS, ieee8023_finding_labels
from .covidx import parse_covidx_line, read_covidx
from .frames import ANNOTATION_FRAMES, frame_scale
from .masks import decode_siim_rle, has_mask, mask_source, row_mask
from .generic import read_folder
from .harmonise import HARMONISED_LABELS, HARMONISED_MAP, harmonise
from .jsrt import read_jsrt
from .mimic import read_mimic
from .nih import NIH_LABELS, read_nih
from .node21 import read_node21
from .pack import DATASET_ALIASES, READERS, detect_dataset, index_root, read_dataset
from .padchest import read_padchest
from .rsna import read_rsna
from .shenzhen import read_shenzhen
from .siim import read_siim
from .splits import assign_splits, duplicate_groups, fraction_keys, group_ids, label_fraction, nested_fractions
from .tbx11k import TBX11K_CATEGORIES, read_tbx11k
from .views import filter_views, view_counts
from .vindr import VINDR_CLASSES, read_vindr

__all__ = [
    "ANNOTATION_FRAMES",
    "IEEE8023_LABELS",
    "IndexNote",
    "SkipLog",
    "decode_siim_rle",
    "frame_scale",
    "has_mask",
    "ieee8023_finding_labels",
    "mask_source",
    "parse_covidx_line",
    "row_mask",
    "READERS",
    "DATASET_ALIASES",
    "HARMONISED_LABELS",
    "HARMONISED_MAP",
    "NIH_LABELS",
    "CHEXPERT_LABELS",
    "VINDR_CLASSES",
    "CHESTX_DET_CLASSES",
    "TBX11K_CATEGORIES",
    "MissingFileWarning",
    "SkippedItem",
    "UnreadableFileWarning",
    "UnreadableRowWarning",
    "UnknownLabelWarning",
    "assign_splits",
    "collect_skipped",
    "detect_dataset",
    "duplicate_groups",
    "filter_views",
    "fraction_keys",
    "group_ids",
    "harmonise",
    "index_root",
    "label_fraction",
    "nested_fractions",
    "read_chestx_det",
    "read_chexpert",
    "read_covid_metadata",
    "read_covidx",
    "read_dataset",
    "read_folder",
    "read_jsrt",
    "read_mimic",
    "read_nih",
    "read_node21",
    "read_padchest",
    "read_rsna",
    "read_shenzhen",
    "read_siim",
    "read_tbx11k",
    "read_vindr",
    "skip_report",
    "view_counts",
]
