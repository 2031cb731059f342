"""Data cases: what a config's ``[data] case = "..."`` builds, and the same builders from Python.

* built in: ``wordnet-nouns``, ``fashion-mnist``, ``synthetic`` (:mod:`.builtin`);
* from scratch (a random CIFAR-style ResNet): ``fashion-mnist-scratch``, ``imagefolder-scratch``
  (:mod:`.scratch`);
* your data: ``imagefolder`` (:func:`imagefolder_case`), ``text`` (:func:`text_case`: CSV, JSON
  Lines, Parquet), ``features`` (:func:`features_case`: precomputed embeddings), ``hf-dataset``
  (:func:`hf_dataset_case`: a ``save_to_disk`` directory);
* anything else: build a :class:`Case` (any ``torch`` dataset, a collate, a backbone factory, for
  instance :func:`~asvp_fast.loop.models.backbones.module_backbone`) and pass it to
  ``asvp_fast.loop.run(config, run_dir, case=...)``, or register a case type with
  :func:`register_case` so configs can name it.

Importing this package registers every case type above.
"""

from . import builtin, features, hf_dataset, imagefolder, scratch, text  # noqa: F401  (register the case types)
from .case import Case
from .datasets import ArrayDataset, ImageFolderDataset, TextDataset, stack_collate
from .feature_store import FeatureRows, FeatureStore, open_features
from .features import FeaturesFields, features_case
from .hf_dataset import HFDatasetFields, hf_dataset_case
from .imagefolder import ImageFolderFields, imagefolder_case
from .registry import CASES, CaseType, case_type, register_case, resolve
from .tabular_io import DataError, read_text_table
from .text import TextFields, text_case

__all__ = ["ArrayDataset", "CASES", "Case", "CaseType", "DataError", "ImageFolderDataset", "TextDataset", "stack_collate", "FeatureRows", "FeatureStore", "FeaturesFields", "HFDatasetFields",
           "ImageFolderFields", "TextFields", "case_type", "features_case", "hf_dataset_case", "imagefolder_case",
           "open_features", "read_text_table", "register_case", "resolve", "text_case"]
