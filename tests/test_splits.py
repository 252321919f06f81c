"""UCF101's and HMDB51's split lists as labels, built on the fly: Windows line endings, repeated and
missing entries, names without their class folder, and lines that cannot be read."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.splits import SplitError, dataset_layout, match_videos, read_labels


def ucf101(folder, split=1, extra_train="", extra_test=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 Archery\r\n")
    (folder / f"trainlist0{split}.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nArchery/v_Archery_g08_c01.avi 2\r\n"
        b"Archery/v_Archery_g08_c01.avi 2\r\n\r\n" + extra_train.encode()  # a repeated line and a blank one
    )
    (folder / f"testlist0{split}.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nArchery/v_Archery_g01_c01.avi\r\n" + extra_test.encode()
    )
    return folder


def test_ucf101_lists_give_label_and_side_per_video(tmp_path):
    folder = ucf101(tmp_path / "ucfTrainTestlist", extra_test="Archery/v_Archery_g02_c01.avi\r\n")
    assert dataset_layout(folder) == "ucf101"
    labels = read_labels(folder, split=1)
    assert len(labels) == 5  # the repeated line counts once
    rows = {row.relpath: (row.label, row.split) for row in labels.itertuples()}
    assert rows["Archery/v_Archery_g08_c01.avi"] == ("Archery", "train")
    assert rows["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"] == ("ApplyEyeMakeup", "test")
    decoded = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g08_c01.avi",
               "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "Archery/v_Archery_g01_c01.avi", "Other/unlisted.avi"]  # fmt: skip
    matched = match_videos(labels, decoded)
    assert sorted(matched.table.relpath) == sorted(decoded[:4])
    assert matched.missing == ["Archery/v_Archery_g02_c01.avi"]
    assert matched.report() == "1 listed videos are not among the decoded videos, skipped: Archery/v_Archery_g02_c01.avi"


def test_a_split_number_picks_its_own_lists_and_a_missing_list_is_named(tmp_path):
    folder = ucf101(tmp_path / "lists", split=2)
    assert len(read_labels(folder, split=2)) == 4
    with pytest.raises(SplitError, match="trainlist01.txt: missing"):
        read_labels(folder, split=1)


def test_ucf101_videos_stored_without_class_folders_match_by_file_name(tmp_path):
    labels = read_labels(ucf101(tmp_path / "lists"), split=1)
    matched = match_videos(labels, ["v_Archery_g08_c01.avi", "v_Archery_g01_c01.avi", "a/v_ApplyEyeMakeup_g01_c01.avi",
                                    "b/v_ApplyEyeMakeup_g01_c01.avi"])  # fmt: skip
    assert sorted(matched.table.relpath) == ["v_Archery_g01_c01.avi", "v_Archery_g08_c01.avi"]
    # Two decoded videos share the name: which one is meant is unknown, so the entry is reported.
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi" in matched.missing


def test_unreadable_and_contradicting_lines_are_refused_with_file_and_line(tmp_path):
    folder = ucf101(tmp_path / "a", extra_train="Archery/v_Archery_g09_c01.avi 7\r\n")
    with pytest.raises(SplitError, match=r"trainlist01.txt:5: class index 7 is not in classInd.txt"):
        read_labels(folder)
    folder = ucf101(tmp_path / "b", extra_test="Archery/v_Archery_g08_c01.avi\r\n")  # in train and in test
    with pytest.raises(SplitError, match=r"Archery/v_Archery_g08_c01.avi is listed as Archery/train \(trainlist01.txt:2\) "
                                         r"and as Archery/test \(testlist01.txt:3\)"):  # fmt: skip
        read_labels(folder)


def hmdb51(folder):
    folder.mkdir(parents=True)
    (folder / "brush_hair_test_split1.txt").write_bytes(b"April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \r\nBlonde_brush_hair_1.avi 2 \r\n"
                                                        b"Unused_brush_hair_2.avi 0 \r\n")  # fmt: skip
    (folder / "cartwheel_test_split1.txt").write_bytes(b"Cartwheel_1.avi 2\nCartwheel_2.avi 1\n")
    (folder / "cartwheel_test_split2.txt").write_bytes(b"Cartwheel_1.avi 1\nCartwheel_2.avi 2\n")
    return folder


def test_hmdb51_codes_give_train_test_and_neither(tmp_path):
    folder = hmdb51(tmp_path / "testTrainMulti_7030_splits")
    assert dataset_layout(folder) == "hmdb51"
    labels = read_labels(folder, split=1)
    rows = {row.relpath: (row.label, row.split) for row in labels.itertuples()}
    assert rows == {"brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi": ("brush_hair", "train"),
                    "brush_hair/Blonde_brush_hair_1.avi": ("brush_hair", "test"),
                    "cartwheel/Cartwheel_1.avi": ("cartwheel", "test"), "cartwheel/Cartwheel_2.avi": ("cartwheel", "train")}  # fmt: skip
    assert read_labels(folder, split=2).set_index("relpath").split["cartwheel/Cartwheel_1.avi"] == "train"
    # Videos extracted flat (no class folders) match by file name.
    matched = match_videos(labels, ["Cartwheel_1.avi", "brush_hair/Blonde_brush_hair_1.avi"])
    assert sorted(matched.table.relpath) == ["Cartwheel_1.avi", "brush_hair/Blonde_brush_hair_1.avi"]
    assert len(matched.missing) == 2
    (folder / "cartwheel_test_split1.txt").write_bytes(b"Cartwheel_1.avi 3\n")
    with pytest.raises(SplitError, match=r"cartwheel_test_split1.txt:1: expected '<video> <0\|1\|2>'"):
        read_labels(folder, split=1)


def test_a_labels_table_still_works_and_a_folder_of_neither_kind_is_named(tmp_path):
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"relpath": ["a.mp4", "b.mp4", "a.mp4"], "label": ["x", "y", "x"]}), path)
    labels = read_labels(path)
    assert labels.to_dict("list") == {"relpath": ["a.mp4", "b.mp4"], "label": ["x", "y"], "group": [None, None], "split": [None, None]}
    pq.write_table(pa.table({"relpath": ["a.mp4", "a.mp4"], "label": ["x", "y"]}), path)
    with pytest.raises(SplitError, match="1 relpaths have two different rows"):
        read_labels(path)
    pq.write_table(pa.table({"relpath": ["a.mp4"], "label": ["x"], "split": ["val"]}), path)
    with pytest.raises(SplitError, match=r"column split holds \['val'\]"):
        read_labels(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SplitError, match="neither UCF101's split lists"):
        read_labels(tmp_path / "empty")
    assert isinstance(read_labels(ucf101(tmp_path / "u")), pd.DataFrame)
