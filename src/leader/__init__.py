"""LeADER: anatomy-disease entangled representations of chest radiographs."""

__version__ = "0.1.0"

