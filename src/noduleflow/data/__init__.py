"""Data: the LUNA16 index and splits, the scan cache, datasets, augmentation and loaders.

Flow: `load_index(DATA)` -> `prepare(DATA)` fills the cache -> `ScanCache(...)` ->
`CandidatePatches` / `MalignancySamples` / `SegmentationCrops` -> `make_loader(...)`.

Names load on first use (PEP 562), so `noduleflow prepare` and its worker processes, which
import `noduleflow.data.prepare_cache`, never pay for importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "Augment": "augment",
    "CachedScan": "cache",
    "LungMask": "cache",
    "ScanCache": "cache",
    "CandidatePatches": "datasets",
    "MalignancySamples": "datasets",
    "PatchDataset": "datasets",
    "BalancedSampler": "loaders",
    "make_loader": "loaders",
    "Candidate": "luna16",
    "Luna16Index": "luna16",
    "Nodule": "luna16",
    "Split": "luna16",
    "load_index": "luna16",
    "split_series": "luna16",
    "PrepareSummary": "prepare_cache",
    "prepare": "prepare_cache",
    "SegmentationCrops": "segmentation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'noduleflow.data' has no attribute {name!r}")
    return getattr(import_module(f"noduleflow.data.{_EXPORTS[name]}"), name)
