"""The one image setting every component uses, and the factory that binds it.

Components are lightweight Python components: kfp.local's SubprocessRunner runs
them in the current environment (it refuses container components), and on a cluster
they run in our image, which already holds ``pcam`` and its pinned dependencies
(hence ``install_kfp_package=False``: the image carries kfp too, nothing is
pip-installed at pod start).

``base_image`` is fixed when a component is created, so the image is not baked in at
import time: every component module exposes its plain function, and
:func:`make_component` binds it to an image. ``pipelines.pcam_training.build_pipeline``
calls it with the image given on the compile command line; the module-level ``*_op``
objects use :data:`PCAM_IMAGE` (env ``PCAM_IMAGE``, read once at import).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from kfp import dsl

DEFAULT_IMAGE = "localhost/pcam/pcam-gpu:dev"
PCAM_IMAGE = os.environ.get("PCAM_IMAGE", DEFAULT_IMAGE)


def make_component(func: Callable, image: str | None = None) -> dsl.PythonComponent:
    """Turn one of our component functions into a KFP component running in ``image``."""
    return dsl.component(func, base_image=image or PCAM_IMAGE, install_kfp_package=False)
