"""DICOM reading and writing: headers -> records, series -> volume (pydicom lives here)."""
