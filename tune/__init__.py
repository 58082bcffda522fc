"""Ray Tune sweeps over the training pipeline (``tune/sweep.py``) and their search spaces."""
