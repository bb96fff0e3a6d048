"""Kubeflow pipeline wiring (``pcam_training``), local runs (``run_local``) and submission (``submit``)."""
