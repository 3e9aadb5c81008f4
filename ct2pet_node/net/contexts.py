"""What the node accepts at association negotiation: storage in a transfer syntax we can decode.

CT storage is what the node translates. Every other storage SOP class is
accepted too by default (``[node] other_sop_classes = "accept"``) and
acknowledged without being kept: a PACS forwards whole studies (CT, PET,
reports...), and one presentation context we refuse fails the whole
forwarding job, the CT included. ``"refuse"`` negotiates CT only, so other
SOP classes are refused before a byte of their data is sent.
Every transfer syntax listed here is decodable by the installed pydicom
plugins (pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls, python-gdcm).
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
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
from pynetdicom.presentation import AllStoragePresentationContexts

from ct2pet_node.net.store_header import CT_STORAGE_SOP_CLASSES

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "CT_STORAGE_SOP_CLASSES",
    "LOSSLESS_COMPRESSED_TRANSFER_SYNTAXES",
    "LOSSY_TRANSFER_SYNTAXES",
    "OTHER_STORAGE_SOP_CLASSES",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "VERIFICATION_SOP_CLASS",
    "storage_sop_classes",
]

# Every storage SOP class pynetdicom knows (170 in pynetdicom 3.0), CT excluded. An
# acceptor may support any number of contexts; the 128 limit is on what one
# association *proposes*, and the negotiation takes the intersection.
OTHER_STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(
    UID(str(context.abstract_syntax))
    for context in AllStoragePresentationContexts
    if context.abstract_syntax not in CT_STORAGE_SOP_CLASSES
)

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


def storage_sop_classes(other_sop_classes: str) -> tuple[UID, ...]:
    """The storage SOP classes to negotiate: CT, plus every other one when ``other_sop_classes`` is "accept"."""
    if other_sop_classes == "accept":
        return CT_STORAGE_SOP_CLASSES + OTHER_STORAGE_SOP_CLASSES
    return CT_STORAGE_SOP_CLASSES
