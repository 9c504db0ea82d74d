"""Detection: segment -> group -> classify -> malignancy, over whole scans.

`Predictor.from_run("runs/detector").predict(volume)` for one `CtVolume`; `detect(SOURCE, RUN, OUT)`
for files and folders (what `noduleflow detect` calls); `train_detector(DATA, run=...)` trains the
three parts into one run folder (what `noduleflow train detector` calls).
"""

from noduleflow.detect.models import DetectorModels, load_detector
from noduleflow.detect.pipeline import DetectSummary, detect, write_results
from noduleflow.detect.predictor import Finding, Predictor, ScanResult

__all__ = ["DetectSummary", "DetectorModels", "Finding", "Predictor", "ScanResult", "detect", "load_detector", "write_results"]
