"""The files of a published SpikeCLIP repository (one repository serves open_clip and timm)."""

OPEN_CLIP_CONFIG = 'open_clip_config.json'
OPEN_CLIP_WEIGHTS = 'open_clip_model.safetensors'
TIMM_CONFIG = 'config.json'
TIMM_WEIGHTS = 'model.safetensors'
ENERGY_REPORT = 'energy.json'
MODEL_CARD = 'README.md'
# Pickled alternatives the two libraries would fall back to; refused unless allow_pickle=True.
PICKLED_OPEN_CLIP_WEIGHTS = ('open_clip_pytorch_model.bin', 'open_clip_pytorch_model.pt', 'open_clip_pytorch_model.pth')
PICKLED_TIMM_WEIGHTS = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'model.pt')
_PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.pkl', '.ckpt')
# Files of an earlier upload that a new one replaces or removes: stale weights (a loader could pick them up)
# and configs / reports that would no longer describe the weights. Other files in the repo are kept.
_REPLACED_PATTERNS = ['*.safetensors', *(f'*{s}' for s in _PICKLE_SUFFIXES), TIMM_CONFIG, OPEN_CLIP_CONFIG,
                      ENERGY_REPORT]

# The keys of timm_spike.energy's report that the card and the metadata read.
ENERGY_REPORT_KEYS = ('model', 'T', 'input_size', 'energy_mj_per_image', 'ann_energy_mj_per_image', 'constants',
                      'layers')
