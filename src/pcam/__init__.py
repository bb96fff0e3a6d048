"""pcam: train, compare and retrain metastatic-cancer classifiers on PatchCamelyon.

The library is plain Python + TensorFlow and never imports kfp; the Kubeflow
components in ``components/`` are thin wrappers around its functions.
"""

__version__ = "0.1.0"

IMAGE_SHAPE = (96, 96, 3)
