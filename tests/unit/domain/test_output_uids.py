from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ct2pet_node.domain.output_uids import (
    OUTPUT_KINDS,
    PET,
    SECONDARY_CAPTURE,
    output_frame_of_reference_uid,
    output_series_uid,
    output_sop_instance_uid,
)
from ct2pet_node.domain.uids import is_valid_uid
from ct2pet_node.errors import InputError

CT_SERIES = "1.2.826.0.1.3680043.8.498.12345"

uid_components = st.integers(min_value=0, max_value=10**12).map(str)
ct_uids = st.lists(uid_components, min_size=2, max_size=6).map(".".join).filter(lambda u: len(u) <= 64)


def test_uids_are_pinned_so_old_outputs_keep_their_identity() -> None:
    # A change here re-identifies every series ever sent: only on purpose.
    assert output_series_uid("1.2.3", "m", PET) == "2.25.269761545151190956601784629412556569846"
    assert output_sop_instance_uid("1.2.3", "m", PET, 0) == "2.25.155251589687387283701285998988739864971"


@given(ct_uids, st.sampled_from(OUTPUT_KINDS), st.integers(min_value=0, max_value=100_000))
def test_uids_are_valid_dicom_uids(ct_uid: str, kind: str, index: int) -> None:
    series = output_series_uid(ct_uid, "cpdm-release", kind)
    instance = output_sop_instance_uid(ct_uid, "cpdm-release", kind, index)
    for uid in (series, instance):
        assert is_valid_uid(uid)
        assert uid.startswith("2.25.")
        assert not uid[5:].startswith("0")


def test_uids_are_deterministic() -> None:
    assert output_series_uid(CT_SERIES, "m", PET) == output_series_uid(CT_SERIES, "m", PET)
    assert output_sop_instance_uid(CT_SERIES, "m", PET, 3) == output_sop_instance_uid(CT_SERIES, "m", PET, 3)


def test_uids_differ_by_series_model_kind_and_index() -> None:
    base = output_series_uid(CT_SERIES, "m", PET)
    assert output_series_uid(CT_SERIES + "1", "m", PET) != base
    assert output_series_uid(CT_SERIES, "m2", PET) != base
    assert output_series_uid(CT_SERIES, "m", SECONDARY_CAPTURE) != base
    instances = {output_sop_instance_uid(CT_SERIES, "m", PET, i) for i in range(500)}
    assert len(instances) == 500
    assert base not in instances


def test_parts_cannot_run_into_each_other() -> None:
    assert output_series_uid("1.2.3", "1m", PET) != output_series_uid("1.2.31", "m", PET)


@pytest.mark.parametrize(
    ("ct_uid", "model", "kind"),
    [("1.2.x", "m", PET), ("1.2.3", "", PET), ("1.2.3", "m", "mpr"), ("1." + "2" * 70, "m", PET)],
)
def test_bad_inputs_are_refused(ct_uid: str, model: str, kind: str) -> None:
    with pytest.raises(InputError):
        output_series_uid(ct_uid, model, kind)


def test_negative_index_is_refused() -> None:
    with pytest.raises(InputError, match="negative"):
        output_sop_instance_uid(CT_SERIES, "m", PET, -1)


def test_pet_shares_the_ct_frame_of_reference_and_sc_has_none() -> None:
    assert output_frame_of_reference_uid(PET, "1.2.3.4") == "1.2.3.4"
    assert output_frame_of_reference_uid(SECONDARY_CAPTURE, "1.2.3.4") is None
    with pytest.raises(InputError):
        output_frame_of_reference_uid(PET, "not-a-uid")
    with pytest.raises(InputError):
        output_frame_of_reference_uid("mpr", "1.2.3")
