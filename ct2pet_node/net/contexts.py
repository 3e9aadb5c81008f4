"""What the node accepts at association negotiation: CT storage in a transfer syntax we can decode.

Restricting presentation contexts refuses other SOP classes (MR, PET, ...)
before a single byte of their data is sent, instead of filtering later.
Every transfer syntax listed here is decodable by the installed pydicom
plugins (pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls, python-gdcm).
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

CT_STORAGE_SOP_CLASSES: tuple[UID, ...] = (CTImageStorage, EnhancedCTImageStorage)

UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

LOSSLESS_COMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGLosslessSV1,  # 1.2.840.10008.1.2.4.70, process 14 selection value 1
    JPEGLossless,  # 1.2.840.10008.1.2.4.57, process 14
    JPEGLSLossless,  # 1.2.840.10008.1.2.4.80
    JPEG2000Lossless,  # 1.2.840.10008.1.2.4.90
    RLELossless,  # 1.2.840.10008.1.2.5
)

LOSSY_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGLSNearLossless,  # 1.2.840.10008.1.2.4.81
    JPEG2000,  # 1.2.840.10008.1.2.4.91, lossless or lossy
    JPEGBaseline8Bit,  # 1.2.840.10008.1.2.4.50, process 1
)

# Order matters when a sender offers several syntaxes in one presentation
# context: pynetdicom accepts the first of OUR list that the sender proposed.
# Uncompressed first, lossy last, so we never make a sender transcode
# lossless data into a lossy syntax; files already in a lossy syntax still
# arrive as they are when the sender proposes only their own syntax.
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    UNCOMPRESSED_TRANSFER_SYNTAXES + LOSSLESS_COMPRESSED_TRANSFER_SYNTAXES + LOSSY_TRANSFER_SYNTAXES
)

VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")
