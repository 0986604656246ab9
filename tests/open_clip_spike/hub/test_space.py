"""The Space beside a published SpikeCLIP (open_clip_spike.hub.space): its files follow the Hub's conventions, the
model card links to it, and ``spikeclip push --space`` uploads one that loads the pushed model by its repo id.

The push and the Space run in a subprocess (this file as a script) whose ``HF_ENDPOINT`` points at the local test
Hub (hub_server.py), as in test_hub.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import open_clip
from safetensors.torch import save_file

import open_clip_spike  # noqa: F401  (registers SpikeCLIP with open_clip)
from open_clip_spike import hub
from open_clip_spike.hub import space

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

TINY = 'SpikeCLIP-Tiny'
TOKEN = 'hf_spikeclipSpaceToken4Lq8Vw2'  # a fake token; it must never appear in output or files
FASHION_MNIST = Path(__file__).parents[2] / 'fixtures' / 'fashion_mnist'


def _front_matter(readme: str) -> dict:
    assert readme.startswith('---\n')
    return yaml.safe_load(readme.split('---\n')[1])


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """SpikeCLIP-Tiny with BatchNorm statistics of Fashion-MNIST test images, as a checkpoint, and one image."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from open_clip_spike.data import IDXDataset
    root = tmp_path_factory.mktemp('space')
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    data = IDXDataset(FASHION_MNIST, 'test', transform=image_transform_v2(
        PreprocessCfg(**model.visual.preprocess_cfg), False))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model.encode_image(torch.stack([data[i][0] for i in range(0, 200, 20)]))
    model.eval()
    ckpt = root / 'tiny.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    image = root / 'trouser.png'
    IDXDataset(FASHION_MNIST, 'test')[2][0].save(image)
    report = root / 'energy.json'
    report.write_text(json.dumps({
        'schema': 'spikeclip.energy/1', 'model': 'spikingformer_clip', 'T': 4, 'input_size': [3, 32, 32],
        'data': 'test images', 'num_samples': 4, 'sample': 'image', 'energy_mj_per_image': 0.0123,
        'ann_energy_mj_per_image': 0.0861, 'teacher_energy_mj_per_image': 0.91,
        'constants': {'e_mac_pj': 4.6, 'e_ac_pj': 0.9}, 'layers': [],
        'teacher': {'model': 'ViT-B-16', 'input_size': [3, 224, 224], 'macs': 1.98e8, 'energy_mj': 0.91}}))
    return dict(root=root, model=model, ckpt=ckpt, image=image, report=report)


def test_space_files_follow_the_hubs_conventions():
    gradio = pytest.importorskip('gradio', reason="the Space's README names the installed Gradio's version")
    from huggingface_hub import SpaceCard
    files = space.space_files('org/tiny', classnames='fashion_mnist', license='mit')
    assert sorted(files) == ['README.md', 'app.py', 'requirements.txt']
    meta = _front_matter(files['README.md'])
    assert meta['sdk'] == 'gradio' and meta['sdk_version'] == gradio.__version__ and meta['app_file'] == 'app.py'
    assert meta['license'] == 'mit' and meta['models'] == ['org/tiny'] and meta['title'] == 'tiny zero-shot'
    assert len(meta['short_description']) <= 60 and meta['colorFrom'] and meta['colorTo']
    assert SpaceCard(files['README.md']).data.sdk == 'gradio'
    compile(files['app.py'], 'app.py', 'exec')
    assert "ZeroShotApp('hf-hub:org/tiny')" in files['app.py'] and "classnames='fashion_mnist'" in files['app.py']
    assert files['requirements.txt'] == f'spikeclip[app]=={open_clip_spike.__version__}\n'
    git = space.space_files('org/tiny', requirement='spikeclip[app] @ git+https://example.org/spikeclip.git',
                            sdk_version='6.0.0')
    assert git['requirements.txt'] == 'spikeclip[app] @ git+https://example.org/spikeclip.git\n'
    assert _front_matter(git['README.md'])['sdk_version'] == '6.0.0'
    assert "build_demo(app)" in git['app.py']


@pytest.mark.parametrize('kwargs, message', [
    (dict(model_repo_id='tiny'), 'must be "ORG/NAME"'),
    (dict(model_repo_id='org/../x'), 'must be "ORG/NAME"'),
    (dict(model_repo_id='org/tiny', classnames='nope'), "Unknown class-name set 'nope'"),
    (dict(model_repo_id='org/tiny', requirement='a\nb'), 'one requirement line'),
])
def test_space_files_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        space.space_files(**kwargs)


def test_space_needs_a_gradio_version(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)
    monkeypatch.setattr(md, 'version', missing)
    with pytest.raises(ValueError, match=r"install gradio \(pip install 'spikeclip\[app\]'\) or pass sdk_version"):
        space.space_files('org/tiny')
    assert _front_matter(space.space_files('org/tiny', sdk_version='6.1.0')['README.md'])['sdk_version'] == '6.1.0'


def test_write_space_folder_whole_or_not_at_all(tmp_path):
    folder = space.write_space_folder(tmp_path / 'space', 'org/tiny', sdk_version='6.0.0')
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'app.py', 'requirements.txt']
    with pytest.raises(FileExistsError, match='overwrite=True'):
        space.write_space_folder(folder, 'org/other', sdk_version='6.0.0')
    with pytest.raises(ValueError, match='ORG/NAME'):
        space.write_space_folder(folder, 'other', overwrite=True, sdk_version='6.0.0')
    assert "hf-hub:org/tiny'" in (folder / 'app.py').read_text()
    space.write_space_folder(folder, 'org/other', overwrite=True, sdk_version='6.0.0')
    assert "hf-hub:org/other'" in (folder / 'app.py').read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['space']


def test_model_card_links_the_space(tiny, tmp_path):
    folder = hub.write_hub_folder(tmp_path / 'repo', tiny['model'], TINY, repo_id='org/tiny',
                                  space_id='org/tiny-demo', verify=False)
    card = (folder / 'README.md').read_text()
    assert '[org/tiny-demo](https://huggingface.co/spaces/org/tiny-demo)' in card
    plain = hub.write_hub_folder(tmp_path / 'plain', tiny['model'], TINY, verify=False)
    assert 'spaces/' not in (plain / 'README.md').read_text()


def test_push_cli_space_needs_the_repo_id(tiny, tmp_path, capsys):
    from open_clip_spike.cli.push import main
    with pytest.raises(SystemExit):
        main([TINY, '--checkpoint', str(tiny['ckpt']), '--local-dir', str(tmp_path / 'x'), '--space', 'org/s'])
    assert 'give --repo-id ORG/NAME with --space' in capsys.readouterr().err
    # with --local-dir the Space folder is written beside the model's (its README names the installed Gradio)
    pytest.importorskip('gradio')
    assert main([TINY, '--checkpoint', str(tiny['ckpt']), '--local-dir', str(tmp_path / 'x'), '--repo-id', 'org/t',
                 '--space', 'org/s', '--energy-report', str(tiny['report']), '--no-verify']) == 0
    assert 'wrote the Space org/s to' in capsys.readouterr().out
    assert "hf-hub:org/t'" in (tmp_path / 'x-space' / 'app.py').read_text()
    assert 'spaces/org/s' in (tmp_path / 'x' / 'README.md').read_text()


def test_pushed_space_loads_the_pushed_model(tiny, tmp_path):
    """``spikeclip push --space`` to the local Hub, then the Space as the Hub runs it: its files downloaded, its
    requirements' package (this checkout), its ``app.py`` run: the page's function answers as the model does."""
    pytest.importorskip('gradio', reason="the Space runs the page (pip install 'spikeclip[app]')")
    from open_clip_spike.app import ZeroShotApp
    with HubServer(token=TOKEN) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
        env.update(HF_ENDPOINT=server.endpoint, HF_HOME=str(tmp_path / 'home'), HF_HUB_DISABLE_TELEMETRY='1',
                   HF_HUB_DISABLE_PROGRESS_BARS='1', GRADIO_ANALYTICS_ENABLED='False',
                   NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost',
                   SPIKECLIP_TEST_THREADS=str(torch.get_num_threads()))
        spec = dict(ckpt=str(tiny['ckpt']), report=str(tiny['report']), image=str(tiny['image']),
                    out=str(tmp_path / 'space-snapshot'))
        proc = subprocess.run([sys.executable, __file__, json.dumps(spec)], env=env, capture_output=True, text=True,
                              timeout=300, cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        assert TOKEN not in proc.stdout + proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        spaces = server.repos['spaces/org/tiny-demo']
        files = spaces.commits[spaces.branches['main']].files
        model_repo = server.repos['org/tiny']
        card = model_repo.commits[model_repo.branches['main']].files['README.md'].decode()
    assert {'README.md', 'app.py', 'requirements.txt'} <= set(files)
    assert _front_matter(files['README.md'].decode())['models'] == ['org/tiny']
    assert f'[org/tiny-demo]({server.endpoint}/spaces/org/tiny-demo)' in card
    assert f'pushed the Space org/tiny-demo (commit {spaces.branches["main"]})' in result['printed']
    assert result['is_blocks'] and result['name'] == TINY
    local = ZeroShotApp(TINY, str(tiny['ckpt'])).classify(tiny['image'], 'fashion_mnist')
    assert result['label'] == local.label
    assert result['probabilities'] == pytest.approx(local.probabilities, abs=1e-5)
    assert result['published']['teacher_energy_mj'] == 0.91
    assert not [p for p in tmp_path.rglob('*') if p.is_file() and TOKEN.encode() in p.read_bytes()]


def _client(spec):
    """Push with the command, download the Space, run its app.py (not as __main__: no server) and classify."""
    import contextlib
    import io
    import runpy

    import gradio as gr
    from huggingface_hub import snapshot_download

    from open_clip_spike.cli.push import main
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main([TINY, '--checkpoint', spec['ckpt'], '--repo-id', 'org/tiny', '--space', 'org/tiny-demo',
                   '--energy-report', spec['report'], '--no-verify', '--token', TOKEN])
    assert rc == 0, printed.getvalue()
    folder = snapshot_download('org/tiny-demo', repo_type='space', local_dir=spec['out'])
    ns = runpy.run_path(str(Path(folder) / 'app.py'), run_name='space_app')
    r = ns['app'].classify(spec['image'], 'fashion_mnist')
    return dict(printed=printed.getvalue(), is_blocks=isinstance(ns['demo'], gr.Blocks), name=ns['app'].name,
                label=r.label, probabilities=r.probabilities, published=r.published)


if __name__ == '__main__':
    torch.set_num_threads(int(os.environ.get('SPIKECLIP_TEST_THREADS', '1')))
    print(json.dumps(_client(json.loads(sys.argv[1]))))
