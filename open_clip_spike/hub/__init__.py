"""Publish SpikeCLIP on the Hugging Face Hub (open_clip and timm layouts, energy report, model card, a Space with its
zero-shot page) and load it."""
from .card import model_card
from .files import (
    ENERGY_REPORT, ENERGY_REPORT_KEYS, MODEL_CARD, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, TIMM_CONFIG, TIMM_WEIGHTS)
from .publish import (
    PickledWeightsError, download_from_hub, load_image_encoder, load_spikeclip, push_to_hub, validate_energy_report,
    write_hub_folder)
from .space import push_space, space_files, space_url, write_space_folder
