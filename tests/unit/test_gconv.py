"""P4M group convolutions: the CNN built with them gives one answer for all 8 views of a patch."""

from __future__ import annotations

import numpy as np
import pytest

from pcam.artifacts import load_model
from pcam.augment import view
from pcam.config import ModelConfig
from pcam.gconv import P4MConv2D
from pcam.models import build_model
from tests.unit._train_helpers import load_real

VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse")
P4M = ModelConfig(cnn_group="p4m", cnn_filters=(2, 3, 4), cnn_head="gap", bn_momentum=0.5)


@pytest.fixture(scope="module")
def patches(pcam_sample):
    return load_real(pcam_sample, per_class=4)[0]


def _views(model, images):
    return np.stack([model.predict(np.asarray(view(images, name)), verbose=0)[:, 0] for name in VIEWS])


def _trained(cfg, images):
    """A few steps of training, so BatchNorm's moving statistics and the weights are not at their start."""
    model = build_model("cnn", cfg, seed=3)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    labels = np.arange(len(images)) % 2
    model.fit(images, labels.astype("float32"), batch_size=4, epochs=2, verbose=0)
    return model


@pytest.mark.parametrize("head", ["gap", "dense"])
def test_p4m_cnn_is_invariant_to_the_eight_views_and_a_plain_cnn_is_not(patches, head):
    p4m = _trained(ModelConfig(**{**P4M.__dict__, "cnn_head": head}), patches)
    scores = _views(p4m, patches)
    assert scores.std(axis=1).max() > 1e-3  # the patches get different scores...
    np.testing.assert_allclose(scores, np.broadcast_to(scores[0], scores.shape), atol=2e-5)  # ...whatever the view
    plain = _trained(ModelConfig(cnn_filters=(16, 24, 32), cnn_head=head, bn_momentum=0.5), patches)
    plain_scores = _views(plain, patches)
    assert np.abs(plain_scores - plain_scores[0]).max() > 1e-3


def test_p4m_layer_shares_each_filter_across_orientations():
    layer = P4MConv2D(5, 3)
    layer.build((None, 12, 12, 8 * 4))
    assert layer.kernel.shape == (9, 8, 4, 5)
    assert layer._full_kernel().shape == (3, 3, 32, 40)  # an ordinary conv kernel, 8x the learned weights
    lifting = P4MConv2D(2, 3, lifting=True)
    lifting.build((None, 12, 12, 3))
    full = np.asarray(lifting._full_kernel())
    turned = np.rot90(full[..., 0], axes=(0, 1))  # filter 0, orientation 0, turned a quarter
    assert any(np.allclose(turned, full[..., 2 * g]) for g in range(1, 8))  # is filter 0 in another orientation
    with pytest.raises(ValueError, match="multiple of 8 channels"):
        P4MConv2D(2, 3).build((None, 12, 12, 12))


def test_p4m_cnn_saves_and_loads_with_the_same_predictions(patches, tmp_path):
    model = build_model("cnn", P4M, seed=1)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(patches, verbose=0), model.predict(patches, verbose=0), atol=1e-6)
    conv_weights = sum(int(np.prod(w.shape)) for w in model.trainable_weights if "conv" in w.path)
    assert conv_weights == 9 * (3 * 2 + 16 * 3 + 24 * 4)  # learned filters only: each is used 8 times
