"""Prompt templates for zero-shot classification, as ``str.format`` strings with one ``{}`` for the class.

These are the prompt sets CLIP published for each benchmark (Radford et al., 2021; the SpikeCLIP paper uses
them). ImageNet's 80 and 7 templates come from open_clip (``open_clip.zero_shot_metadata``). Fashion-MNIST
has no CLIP prompt set; its templates here describe small grayscale product photos.
"""
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

__all__ = ['TEMPLATES']


def _as_format(templates) -> tuple:
    # open_clip's templates are lambdas; calling them with '{}' gives the format string.
    return tuple(t('{}') for t in templates)


SIMPLE = ('a photo of a {}.',)

CIFAR = (
    'a photo of a {}.', 'a blurry photo of a {}.', 'a black and white photo of a {}.',
    'a low contrast photo of a {}.', 'a high contrast photo of a {}.', 'a bad photo of a {}.',
    'a good photo of a {}.', 'a photo of a small {}.', 'a photo of a big {}.', 'a photo of the {}.',
    'a blurry photo of the {}.', 'a black and white photo of the {}.', 'a low contrast photo of the {}.',
    'a high contrast photo of the {}.', 'a bad photo of the {}.', 'a good photo of the {}.',
    'a photo of the small {}.', 'a photo of the big {}.',
)

STL10 = ('a photo of a {}.', 'a photo of the {}.')

FLOWERS102 = ('a photo of a {}, a type of flower.',)

OXFORD_PETS = ('a photo of a {}, a type of pet.',)

CALTECH101 = (
    'a photo of a {}.', 'a painting of a {}.', 'a plastic {}.', 'a sculpture of a {}.', 'a sketch of a {}.',
    'a tattoo of a {}.', 'a toy {}.', 'a rendition of a {}.', 'a embroidered {}.', 'a cartoon {}.',
    'a {} in a video game.', 'a plushie {}.', 'a origami {}.', 'art of a {}.', 'graffiti of a {}.',
    'a drawing of a {}.', 'a doodle of a {}.', 'a photo of the {}.', 'a painting of the {}.', 'the plastic {}.',
    'a sculpture of the {}.', 'a sketch of the {}.', 'a tattoo of the {}.', 'the toy {}.', 'a rendition of the {}.',
    'the embroidered {}.', 'the cartoon {}.', 'the {} in a video game.', 'the plushie {}.', 'the origami {}.',
    'art of the {}.', 'graffiti of the {}.', 'a drawing of the {}.', 'a doodle of the {}.',
)

FASHION_MNIST = (
    'a photo of a {}.', 'a black and white photo of a {}.', 'a low resolution photo of a {}.',
    'a photo of the {}.',
)

TEMPLATES = {
    'simple': SIMPLE,
    'fashion_mnist': FASHION_MNIST,
    'cifar10': CIFAR,
    'cifar100': CIFAR,
    'stl10': STL10,
    'flowers102': FLOWERS102,
    'oxford_pets': OXFORD_PETS,
    'caltech101': CALTECH101,
    'imagenet': _as_format(OPENAI_IMAGENET_TEMPLATES),
    'imagenet_simple': _as_format(SIMPLE_IMAGENET_TEMPLATES),
}
