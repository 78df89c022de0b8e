"""Data: image I/O, pair transforms, datasets with decoded caches, the DataModule, MATLAB bicubic."""

from __future__ import annotations

from meta_kd_sr.data.datamodule import SRDataModule, check_disjoint
from meta_kd_sr.data.datasets import DIV2K, ImageFolderSR, find_sibling_lr_dir
from meta_kd_sr.data.embedded import EMBEDDED_PHOTOS, EmbeddedPhotos, load_photo
from meta_kd_sr.data.imresize import imresize, imresize_uint8
from meta_kd_sr.data.io import list_images, read_image, save_npy, save_png, to_float, to_uint8
from meta_kd_sr.data.paired import CACHE_MODES, ImageRecord, PairedImageDataset, SampleKey
from meta_kd_sr.data.prepare import generate_lr_folder
from meta_kd_sr.data.samplers import ShardedEvalSampler, TrainSampler
from meta_kd_sr.data.transforms import (
    SUPPORTED_SCALES,
    augment_pair,
    bicubic_downscale,
    check_pair_sizes,
    crop_to_multiple,
    random_crop_pair,
)

__all__ = [
    "CACHE_MODES",
    "DIV2K",
    "EMBEDDED_PHOTOS",
    "SUPPORTED_SCALES",
    "EmbeddedPhotos",
    "ImageFolderSR",
    "ImageRecord",
    "PairedImageDataset",
    "SRDataModule",
    "SampleKey",
    "ShardedEvalSampler",
    "TrainSampler",
    "augment_pair",
    "bicubic_downscale",
    "check_disjoint",
    "check_pair_sizes",
    "crop_to_multiple",
    "find_sibling_lr_dir",
    "generate_lr_folder",
    "imresize",
    "imresize_uint8",
    "list_images",
    "load_photo",
    "random_crop_pair",
    "read_image",
    "save_npy",
    "save_png",
    "to_float",
    "to_uint8",
]
