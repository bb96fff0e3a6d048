import h5py
import numpy as np
import pandas as pd
import pytest

from pcam.cli import main
from pcam.config import SyntheticConfig
from pcam.errors import ConfigError
from pcam.synth import MARKER_FILE, file_names, write_synthetic

OFFICIAL_META_COLUMNS = ["Unnamed: 0", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"]


def _read(root, split):
    x_name, y_name, meta_name = file_names(split)
    with h5py.File(root / x_name) as fx, h5py.File(root / y_name) as fy:
        return fx["x"][()], fy["y"][()], pd.read_csv(root / meta_name)


def test_official_layout_balanced_and_slide_disjoint(synthetic_h5_dir):
    slides = {}
    for split, n in (("train", 96), ("valid", 32), ("test", 32)):
        x, y, meta = _read(synthetic_h5_dir, split)
        assert x.shape == (n, 96, 96, 3) and x.dtype == np.uint8
        assert y.shape == (n, 1, 1, 1) and y.dtype == np.uint8
        assert list(meta.columns) == OFFICIAL_META_COLUMNS
        assert int(y.sum()) == n // 2
        np.testing.assert_array_equal(meta["center_tumor_patch"].to_numpy(), y.ravel() == 1)
        assert (meta["tumor_patch"] | ~meta["center_tumor_patch"]).all()
        slides[split] = set(meta["wsi"])
        assert len(slides[split]) >= 2
        # Positives come from tumor slides only, like Camelyon16's normal slides.
        assert not meta.loc[meta["center_tumor_patch"], "wsi"].str.contains("normal").any()
    assert not (
        slides["train"] & slides["valid"] or slides["train"] & slides["test"] or slides["valid"] & slides["test"]
    )
    assert (synthetic_h5_dir / MARKER_FILE).exists()


def test_label_lives_in_the_centre(synthetic_h5_dir):
    """Tumour (label 1) means large nuclei in the centre: the centre's colour varies differently."""
    x, y, _ = _read(synthetic_h5_dir, "train")
    y = y.ravel()
    centre = x[:, 32:64, 32:64].astype(np.float32)
    # Lymphocytes are small and dense, tumour nuclei large: pixel-to-pixel differences are
    # larger (more edges) in label-0 centres, while the mean brightness is about the same.
    edges = np.abs(np.diff(centre, axis=2)).mean(axis=(1, 2, 3))
    assert edges[y == 0].mean() > edges[y == 1].mean() * 1.15
    assert abs(centre[y == 0].mean() - centre[y == 1].mean()) < 12


def test_deterministic_for_a_seed(tmp_path):
    sizes = SyntheticConfig(train=20, valid=6, test=6, slides=6)
    a, b, c = (write_synthetic(tmp_path / name, sizes, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    for split in ("train", "valid", "test"):
        xa, ya, ma = _read(a, split)
        xb, yb, mb = _read(b, split)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        pd.testing.assert_frame_equal(ma, mb)
    assert not np.array_equal(_read(a, "train")[0], _read(c, "train")[0])


@pytest.mark.parametrize(
    "sizes, key",
    [
        (SyntheticConfig(train=100, valid=10, test=10, slides=4), "data.synthetic.slides"),
        (SyntheticConfig(train=100, valid=1, test=10, slides=12), "data.synthetic.valid"),
    ],
)
def test_bad_sizes_name_the_key(tmp_path, sizes, key):
    with pytest.raises(ConfigError, match=key):
        write_synthetic(tmp_path / "out", sizes, 0)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["synth", "--out", str(out), "--train", "8", "--valid", "4", "--test", "4", "--slides", "6"]) == 0
    assert _read(out, "valid")[0].shape == (4, 96, 96, 3)
