"""Pure values and rules: no I/O, no third-party DICOM, network or torch code."""
