"""Run ids: which names an id's family holds, and fresh ids claimed by a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_utils.errors import LabError
from anomaly_utils.pipeline import run_ids


@pytest.mark.parametrize("entry, taken", [
    ("20261207-120000", True),
    ("20261207-120000-parts", True),
    ("20261207-120000-defaults", True),
    ("20261207-120000-auto.json", True),
    ("20261207-120000-2", False),  # another id of the same second
    ("20261207-120000-2-parts", False),
    ("20261207-1200001", False),
])
def test_an_id_is_taken_by_its_family_and_not_by_its_numbered_siblings(tmp_path: Path, entry,
                                                                        taken):
    (tmp_path / entry).mkdir()
    assert run_ids.id_taken(tmp_path, "20261207-120000") is taken
    assert not run_ids.id_taken(tmp_path / "absent", "20261207-120000")


def test_a_fresh_id_skips_taken_ids_and_claims_raced_ones(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(run_ids, "new_run_id", lambda prefix="": f"{prefix}20261207-120000")
    (tmp_path / "x-20261207-120000-real").mkdir()
    raced = []

    def make(run_id: str) -> str:
        if run_id == "x-20261207-120000-2" and not raced:  # another run made it meanwhile
            raced.append(run_id)
            (tmp_path / run_id).mkdir()
            raise FileExistsError(run_id)
        (tmp_path / run_id).mkdir()
        return run_id
    assert run_ids.claim_new_id(tmp_path, make, "x-") == "x-20261207-120000-3"
    assert raced == ["x-20261207-120000-2"]
    with pytest.raises(LabError, match="no free run id") as info:
        run_ids.claim_new_id(tmp_path, make, "x-", attempts=3)
    assert info.value.fix == "pass --run-id"
