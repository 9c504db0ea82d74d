"""What trains a whole detector (segment -> export -> mine -> classify -> malignancy -> export).

Kept apart from `noduleflow.detect` because it needs both sides: the trainer (`noduleflow.train`)
and the inference pipeline (mining runs the trained U-Net over the training scans). A server imports
`noduleflow.detect` alone. `train_detector` is what `noduleflow train detector` calls.
"""
