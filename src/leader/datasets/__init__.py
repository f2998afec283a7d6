"""Dataset readers: each turns a dataset folder into a :class:`leader.manifest.Manifest`.

Every reader has the form ``read_X(root, ..., check_files=True, on_error="raise")``.

* ``check_files=True``: rows whose image file is missing are skipped with one
  :class:`MissingFileWarning` naming the count and the first ids; ``width``/``height``
  (and ``pixel_spacing`` when the header has it and the metadata does not) come from
  :func:`leader.io.read_header` (no pixel decode). ``on_error="skip"`` also skips images
  whose header cannot be read (one :class:`UnreadableFileWarning` with the reasons);
  the default ``"raise"`` propagates :class:`leader.errors.ImageReadError`.
* ``check_files=False``: no image file is opened or stat'ed (folders may be listed to
  locate files); sizes come from metadata or the dataset's documented release size.

Registry: :data:`READERS` = ``{"nih", "tbx11k", "jsrt", "covid", "siim", "rsna", "folder"}``;
:func:`index_root` detects and reads every dataset under a root.

Harmonised label names
----------------------
Label columns are ``label:<Name>``; values 1 / 0 / NaN (unknown). A label a dataset does
not annotate is NaN for its rows after :meth:`Manifest.concat`.

==================================  ==========================================================
harmonised name                     source label(s)
==================================  ==========================================================
Atelectasis                         NIH ``Atelectasis``
Cardiomegaly                        NIH ``Cardiomegaly``
Effusion                            NIH ``Effusion``
Infiltration                        NIH ``Infiltration``; NIH box file ``Infiltrate``
Mass                                NIH ``Mass``
Nodule                              NIH ``Nodule``; JSRT ``JPCLN`` cases (1) / ``JPCNN`` (0)
Pneumonia                           NIH ``Pneumonia``; COVID finding ``Pneumonia`` or
                                    ``COVID-19`` (COVID-19 pneumonia); RSNA ``Target=1``
                                    ("Lung Opacity", boxes labelled ``Pneumonia``)
Pneumothorax                        NIH ``Pneumothorax``; SIIM-ACR RLE mask present
Consolidation                       NIH ``Consolidation``
Edema                               NIH ``Edema``
Emphysema                           NIH ``Emphysema``
Fibrosis                            NIH ``Fibrosis``
Pleural_Thickening                  NIH ``Pleural_Thickening``
Hernia                              NIH ``Hernia``
Tuberculosis                        TBX11K: OR of the three TB categories (folder ``tb``
                                    without annotation entry: 1)
ActiveTuberculosis                  TBX11K category 1
ObsoletePulmonaryTuberculosis       TBX11K category 2
PulmonaryTuberculosis               TBX11K category 3 (no positives in train/val)
COVID-19                            Figure1 / Actualmed finding ``COVID-19``
==================================  ==========================================================

``normal`` (not a label column) is True for NIH ``No Finding``, JSRT non-nodule cases,
TBX11K ``health`` images, COVID ``No finding`` and RSNA class ``Normal``.

Dataset names (``dataset`` column / id prefix): ``nih``, ``tbx11k``, ``jsrt``,
``covid-figure1``, ``covid-actualmed``, ``siim``, ``rsna``, and the folder name for
:func:`read_folder`.
"""

from __future__ import annotations

from ._common import MissingFileWarning, UnreadableFileWarning
from .covid import read_covid_metadata
from .generic import read_folder
from .jsrt import read_jsrt
from .nih import NIH_LABELS, read_nih
from .pack import READERS, detect_dataset, index_root
from .rsna import read_rsna
from .siim import read_siim
from .tbx11k import TBX11K_CATEGORIES, read_tbx11k

#: All harmonised label names, in the order of the table above.
HARMONISED_LABELS: tuple[str, ...] = NIH_LABELS + (
    "Tuberculosis",
    "ActiveTuberculosis",
    "ObsoletePulmonaryTuberculosis",
    "PulmonaryTuberculosis",
    "COVID-19",
)

__all__ = [
    "READERS",
    "HARMONISED_LABELS",
    "NIH_LABELS",
    "TBX11K_CATEGORIES",
    "MissingFileWarning",
    "UnreadableFileWarning",
    "detect_dataset",
    "index_root",
    "read_covid_metadata",
    "read_folder",
    "read_jsrt",
    "read_nih",
    "read_rsna",
    "read_siim",
    "read_tbx11k",
]
