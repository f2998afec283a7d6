"""Project error types.

Every error raised on bad input names the offending file, row or box, so that a
failure deep inside a DataLoader worker can still be traced to its source.
"""

from __future__ import annotations


class LeaderError(Exception):
    """Base class of all LeADER errors."""


class ImageReadError(LeaderError, ValueError):
    """A file could not be decoded into a usable radiograph.

    Raised for truncated/corrupt files, unknown formats, constant images and
    missing decoders. The message always starts with the file path.
    """


class DicomReadError(ImageReadError):
    """A DICOM file lacks pixel data / transfer syntax or has no decoder (field report BR-03)."""


class ManifestError(LeaderError, ValueError):
    """A metadata file or manifest row is malformed; the message names file and row."""


class BoxError(LeaderError, ValueError):
    """A bounding box is invalid for its image (zero area, outside the image, NaN)."""


class TeacherInputError(LeaderError, ValueError):
    """A batch violates a teacher's declared input contract (field report BR-05)."""
