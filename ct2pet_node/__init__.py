"""ct2pet-node: a DICOM node that turns CT series into synthetic PET series."""

__version__ = "0.1.0"
