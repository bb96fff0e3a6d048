"""The artifact rules written once (pcam.artifacts): which model of a run is final, where its file is."""

from __future__ import annotations

import pytest

from pcam.artifacts import MODEL_FILE, final_model_dir, load_model, model_file
from pcam.errors import DataError


def test_final_model_is_the_finetuned_one_only_when_its_file_exists(tmp_path):
    run = tmp_path / "cnn-constant"
    (run / "train").mkdir(parents=True)
    (run / "train" / MODEL_FILE).write_bytes(b"stage 1")
    assert final_model_dir(run) == run / "train"
    (run / "finetune").mkdir()  # a failed fine-tune (or an empty KFP output directory)
    assert final_model_dir(run) == run / "train"
    (run / "finetune" / MODEL_FILE).write_bytes(b"stage 2")
    assert final_model_dir(str(run)) == run / "finetune"


def test_model_file_of_a_directory_or_a_keras_file(tmp_path):
    assert model_file(tmp_path) == tmp_path / MODEL_FILE
    assert model_file(tmp_path / "best.keras") == tmp_path / "best.keras"
    (tmp_path / "odd.keras").mkdir()  # a directory that happens to end in .keras holds the file
    assert model_file(tmp_path / "odd.keras") == tmp_path / "odd.keras" / MODEL_FILE


def test_load_model_refuses_a_directory_without_a_model_before_keras_loads(tmp_path):
    with pytest.raises(DataError, match=r"model\.keras: model file missing"):
        load_model(tmp_path)
