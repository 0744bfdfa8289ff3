"""The ELPV dataset command: layout, split, counts and errors, on a generated stand-in of the
package's data (the real package is used by the quality benchmark)."""

from __future__ import annotations

import pytest

from anomaly_utils.data.elpv import MODULE_TYPES, write_elpv, write_stand_in
from anomaly_utils.data.layout import scan_dataset
from anomaly_utils.errors import DataError, LabError, ParameterError
from anomaly_utils.pipeline.cli import main


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return write_stand_in(tmp_path_factory.mktemp("elpv-src") / "data", per_group=5)


def test_layout_counts_and_split(stand_in, tmp_path):
    written = write_elpv(tmp_path / "elpv", source=stand_in, test_fraction=0.2)
    assert sorted(written) == sorted(MODULE_TYPES)
    for folder in written.values():
        train = sorted(p.name for p in (folder / "train" / "good").iterdir())
        test_good = sorted(p.name for p in (folder / "test" / "good").iterdir())
        defective = list((folder / "test" / "defective").iterdir())
        # 10 normals per type (two groups of 5): 2 to the test split, disjoint from train.
        assert (len(train), len(test_good), len(defective)) == (8, 2, 5)
        assert not set(train) & set(test_good)
        assert not (folder / "ground_truth").exists()
        readme = (folder / "README.md").read_text()
        assert "left out: 10 ambiguous cells" in readme and "Deitsch" in readme
        assert len((folder / "SOURCES.tsv").read_text().splitlines()) == 1 + 8 + 2 + 5
        index = scan_dataset(folder, allow_missing_masks=True)
        assert index.defect_types == ["defective"]


def test_files_are_copied_byte_for_byte(stand_in, tmp_path):
    folder = write_elpv(tmp_path / "elpv", source=stand_in)["mono"]
    for line in (folder / "SOURCES.tsv").read_text().splitlines()[1:]:
        target, source, _ = line.split("\t")
        assert (folder / target).read_bytes() == (stand_in / source).read_bytes()


def test_split_depends_on_seed_only(stand_in, tmp_path):
    def test_names(seed, name):
        folder = write_elpv(tmp_path / name, source=stand_in, seed=seed)["poly"]
        return sorted(p.name for p in (folder / "test" / "good").iterdir())

    first = test_names(0, "a")
    assert test_names(0, "b") == first
    assert any(test_names(seed, f"s{seed}") != first for seed in range(1, 6))


def test_refuses_to_overwrite_and_bad_fraction(stand_in, tmp_path):
    write_elpv(tmp_path / "elpv", source=stand_in)
    with pytest.raises(LabError, match="--overwrite"):
        write_elpv(tmp_path / "elpv", source=stand_in)
    write_elpv(tmp_path / "elpv", source=stand_in, overwrite=True)
    with pytest.raises(ParameterError, match="test_fraction"):
        write_elpv(tmp_path / "other", source=stand_in, test_fraction=1.0)


def test_bad_label_line_is_named(stand_in, tmp_path):
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    (broken / "labels.csv").write_text("images/cell0001.png  maybe  mono\n")
    with pytest.raises(DataError, match="line 1"):
        write_elpv(tmp_path / "elpv", source=broken)


def test_command_line(stand_in, tmp_path, capsys):
    assert main(["make-elpv", str(tmp_path / "elpv"), "--source", str(stand_in)]) == 0
    assert "ELPV mono" in capsys.readouterr().out
    assert main(["make-elpv", str(tmp_path / "elpv"), "--source", str(tmp_path / "none")]) == 2
    assert "labels.csv" in capsys.readouterr().err
