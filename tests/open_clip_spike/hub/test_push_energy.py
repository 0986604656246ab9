"""``spikeclip push`` without ``--energy-report``: the energy is measured on the bundled sample images and the
published folder (energy.json, safetensors metadata, model card) says so."""
import json

import pytest
from safetensors import safe_open

from open_clip_spike.cli import push
from open_clip_spike.energy import PUBLISH_ENERGY_DATA, energy_for_publishing
from timm_spike.energy.data import SKIMAGE_PHOTOS

TINY = 'SpikeCLIP-Tiny'


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    """The folder ``spikeclip push --local-dir`` writes for a tiny checkpoint with no energy report given."""
    import contextlib
    import io

    import open_clip
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    root = tmp_path_factory.mktemp('push_energy')
    path = str(root / 'tiny.safetensors')
    save_file(model.state_dict(), path)
    folder = root / 'repo'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = push.main([TINY, '--checkpoint', path, '--local-dir', str(folder), '--repo-id', 'org/spikeclip-tiny'])
    assert rc == 0, out.getvalue()
    return dict(folder=folder, out=out.getvalue(), checkpoint=path, model=model)


def test_push_without_report_measures_energy_on_bundled_images(published):
    folder = published['folder']
    report = json.loads((folder / 'energy.json').read_text())
    assert report['sample'] == 'image' and report['T'] == 4 and report['input_size'] == [3, 32, 32]
    assert report['num_samples'] == len(SKIMAGE_PHOTOS) == 8
    assert 'scikit-image photos' in report['data'] and 'sample images bundled with timm_spike' in report['data']
    assert any('spikeclip push' in n and 'no energy report was given' in n for n in report['notes'])
    # a spiking model costs less than the same network as an ANN, and both are positive
    assert 0 < report['energy_mj_per_image'] < report['ann_energy_mj_per_image']
    text = report['text']
    assert text['sample'] == 'prompt' and text['energy_mj_per_prompt'] > 0
    assert 'class prompts of the sample images' in text['data']
    assert f"{report['energy_mj_per_image']:.4g} mJ per image" in published['out']


def test_measured_report_reaches_card_and_metadata(published):
    folder = published['folder']
    report = json.loads((folder / 'energy.json').read_text())
    card = (folder / 'README.md').read_text()
    assert 'No energy report was published' not in card
    assert 'sample images bundled with timm_spike' in card
    with safe_open(str(folder / 'open_clip_model.safetensors'), 'pt') as f:
        meta = f.metadata()
    assert float(meta['energy_mj_per_image']) == pytest.approx(report['energy_mj_per_image'], rel=1e-12)


def test_published_figures_are_those_of_the_checkpoint(published):
    # measured again from the model object: the same figures (neurons start from rest, eval mode)
    from open_clip_spike.checkpoint import load_checkpoint_file
    model, again = energy_for_publishing(published['checkpoint'], TINY)
    report = json.loads((published['folder'] / 'energy.json').read_text())
    assert all((load_checkpoint_file(published['checkpoint'])[k] == v).all() for k, v in model.state_dict().items())
    assert again['energy_mj_per_image'] == pytest.approx(report['energy_mj_per_image'], rel=1e-9)
    assert again['text']['energy_mj_per_prompt'] == pytest.approx(report['text']['energy_mj_per_prompt'], rel=1e-9)
    assert [l['name'] for l in again['layers']] == [l['name'] for l in report['layers']]


def test_given_report_is_published_as_is(tmp_path, tiny_checkpoint, capsys):
    path, model = tiny_checkpoint
    _, measured = energy_for_publishing(model, TINY)
    measured['data'] = 'my own validation images'
    given = tmp_path / 'energy.json'
    given.write_text(json.dumps(measured))
    folder = tmp_path / 'repo'
    assert push.main([TINY, '--checkpoint', path, '--local-dir', str(folder), '--energy-report', str(given)]) == 0
    assert 'no --energy-report' not in capsys.readouterr().out
    assert json.loads((folder / 'energy.json').read_text()) == measured


def test_energy_for_publishing_refusals(tiny_checkpoint, teacher_checkpoint):
    path, model = tiny_checkpoint
    with pytest.raises(ValueError, match='bundled image set'):
        energy_for_publishing(model, TINY, data='/some/folder')
    with pytest.raises(ValueError, match='not a registered SpikeCLIP config'):
        energy_for_publishing(teacher_checkpoint[0], 'SpikeCLIP-DemoTeacher')
    with pytest.raises(ValueError, match='does not fit SpikeCLIP-Tiny-TextTransformer'):
        energy_for_publishing(path, 'SpikeCLIP-Tiny-TextTransformer')
    assert PUBLISH_ENERGY_DATA == 'skimage'


@pytest.mark.parametrize('case', ['wrong_config', 'missing_checkpoint', 'existing_folder'])
def test_push_bad_input_is_one_line_exit_2(case, tmp_path, tiny_checkpoint, capsys):
    path, _ = tiny_checkpoint
    folder = tmp_path / 'repo'
    model = TINY
    if case == 'wrong_config':
        model = 'SpikeCLIP-Tiny-TextTransformer'
    elif case == 'missing_checkpoint':
        path = str(tmp_path / 'nope.safetensors')
    else:
        folder.mkdir()
    rc = push.main([model, '--checkpoint', path, '--local-dir', str(folder)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith('spikeclip push: error: ') and 'Traceback' not in err
    expected = {'wrong_config': 'does not fit', 'missing_checkpoint': 'not found', 'existing_folder': 'exists'}
    assert expected[case] in err
    assert not (folder / 'energy.json').exists()
