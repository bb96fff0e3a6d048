"""The report component's body, run in-process through ``.python_func`` (no kfp.local, seconds not minutes).

The runs are real evaluations of a tiny model on real patches; the dataset and shards
are the real tiny ones the data steps' fixtures write. kfp's own artifact classes carry
the paths, as the executor would hand them over.
"""

import re
from pathlib import Path

from kfp.dsl import HTML, Dataset, Markdown

from components.report import report_op
from pcam.config import config_from_dict, dump_config
from tests.fixtures_shards import sample_patches
from tests.unit.test_report import make_run


def _artifact(kind, path: Path):
    artifact = kind(name=path.name)
    artifact.path = str(path)
    return artifact


def test_report_component_publishes_the_self_contained_page_and_the_model_card(
    pcam_sample, tiny_dataset, tiny_shards, tmp_path
):
    patches = sample_patches(pcam_sample, "valid", 20)
    scratch = make_run(tmp_path / "runs", "cnn", "constant", 1, patches)
    transfer = make_run(tmp_path / "runs", "mobilenetv2", "onecycle", 2, patches, finetune=True)
    out = tmp_path / "outputs"
    out.mkdir()
    report_dir = _artifact(Dataset, out / "report")
    report_op.python_func(
        scratch_runs=[_artifact(Dataset, scratch)],
        transfer_runs=[_artifact(Dataset, transfer)],
        dataset=_artifact(Dataset, tiny_dataset),
        shards=_artifact(Dataset, tiny_shards),
        config_yaml=dump_config(config_from_dict({"name": "component-report"})),
        report_dir=report_dir,
        html=_artifact(HTML, out / "page.html"),
        summary=_artifact(Markdown, out / "summary.md"),
    )
    page = (out / "page.html").read_text()
    # The UI's page is the report's own page, byte for byte: its figures are already embedded.
    assert page == (out / "report" / "report.html").read_text()
    assert not re.search(r'src="(?!data:image/png;base64,)', page)
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(list((out / "report" / "plots").iterdir()))
    assert (out / "summary.md").read_text() == (out / "report" / "summary.md").read_text()
    # The model card comes from the real dataset and shards the steps wrote.
    index = (tiny_shards / "index.json").read_text()
    shard = re.search(r'"sha256": "([0-9a-f]{64})"', index).group(1)
    assert "component-report" in page and shard in page and "Step timings" in page
    assert "test (slide-disjoint from train: yes)" in page  # the official split's facts, carried by index.json
    assert report_dir.metadata["pairs"] == 2 and report_dir.metadata["best_model"] in ("cnn", "mobilenetv2")
    assert "| cnn" in (out / "summary.md").read_text() and "| mobilenetv2" in (out / "summary.md").read_text()
