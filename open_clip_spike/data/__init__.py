"""Datasets, class names and prompt templates for SpikeCLIP training and zero-shot evaluation."""
from .classnames import CLASSNAMES
from .datasets import BUNDLED_CLASSNAMES, TORCHVISION_DATASETS, build_dataset, dataset_classnames, get_classnames, get_templates
from .images import ImageFileError, load_image
from .idx import IDXDataset, find_idx_files, is_idx_dir, read_idx
from .templates import TEMPLATES
