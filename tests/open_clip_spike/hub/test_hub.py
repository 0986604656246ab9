"""Publishing on and downloading from the Hugging Face Hub (open_clip_spike.hub).

Client scenarios run the real ``huggingface_hub`` client in a subprocess (this file run as a script) whose
``HF_ENDPOINT`` points at tests/open_clip_spike/hub_server.py on 127.0.0.1 and whose ``HF_HOME`` is a fresh
folder: ``HF_ENDPOINT`` is read when huggingface_hub is imported, which the test process has already done.
Folder writing, the model card and validation are tested in this process.
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import open_clip
import timm
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import open_clip_spike  # noqa: F401  (registers SpikeCLIP with open_clip)
from open_clip_spike import hub
from open_clip_spike.cli.push import main as push_main
from open_clip_spike.cli import COMMANDS

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

TINY = 'SpikeCLIP-Tiny'
TOKEN = 'hf_spikeclipTestToken7Qx2ZpL9'  # a fake token; it must never appear in output or files
PROMPTS = ['a photo of a cat.', 'a photo of a dog.', 'a blurry photo of a zebra.']
CHILD_TIMEOUT = 240


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _tiny(seed: int) -> torch.nn.Module:
    """SpikeCLIP-Tiny with BN running statistics from two train-mode batches, so that in eval mode its neurons
    fire and the embeddings depend on the weights (an untrained model with identity BN stats is nearly silent)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY)
    tok = open_clip.get_tokenizer(TINY)
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:  # cumulative average: the running statistics become those of the batches seen
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(6, 3, 32, 32, generator=g), tok(PROMPTS * 2))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _variant(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every weight perturbed by 5% noise: other embeddings, same firing regime."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
    return other.eval()


def _embed(model: torch.nn.Module, inputs):
    with torch.no_grad():
        return model.encode_image(inputs['images']), model.encode_text(inputs['tokens'])


def _checkpoint(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _report(T: int = 4, snn: float = 0.0123, ann: float = 0.0861) -> dict:
    """An energy report in timm_spike.energy's schema (figures chosen by the test, not measured)."""
    return {
        'schema': 'spikeclip.energy/1', 'model': 'spikingformer_clip', 'T': T, 'input_size': [3, 32, 32],
        'data': 'test images', 'num_samples': 4, 'sample': 'image',
        'energy_mj_per_image': snn, 'ann_energy_mj_per_image': ann, 'teacher_energy_mj_per_image': 0.91,
        'constants': {'e_mac_pj': 4.6, 'e_ac_pj': 0.9, 'source': 'Horowitz 2014'},
        'layers': [
            {'name': 'patch_embed.stages.0.conv', 'ops': 'conv', 'input': 'real', 'firing_rate': None,
             'dense_macs': 1e6, 'macs': 1e6, 'sops': 0.0, 'energy_mj': 0.0046},
            {'name': 'blocks.0.mlp.fc1_conv', 'ops': 'conv', 'input': 'spikes', 'firing_rate': 0.137,
             'dense_macs': 2e6, 'macs': 0.0, 'sops': 2.74e5, 'energy_mj': 0.00025},
        ],
        'teacher': {'model': 'ViT-B-16', 'input_size': [3, 224, 224], 'macs': 1.98e8, 'energy_mj': 0.91},
    }


def _env(server: HubServer, hf_home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    env.update(
        HF_ENDPOINT=server.endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY='1',
        HF_HUB_DISABLE_PROGRESS_BARS='1', NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost',
        # the same thread count as this process: CPU reductions then sum in the same order, bit for bit
        SPIKECLIP_TEST_THREADS=str(torch.get_num_threads()), **extra)
    return env


def _run(args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                          cwd=str(Path(__file__).parent))


def _client(scenario: str, spec: dict, env: dict) -> dict:
    """Run ``scenario`` of this file in a subprocess; return the JSON it prints last."""
    proc = _run([__file__, scenario, json.dumps(spec)], env)
    assert proc.returncode == 0, f'client {scenario} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
    assert TOKEN not in proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _files_containing(root: Path, needle: bytes):
    return [p for p in root.rglob('*') if p.is_file() and needle in p.read_bytes()]


# ----------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope='module')
def server():
    with HubServer(token=TOKEN) as s:
        yield s


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Fixed inputs, the reference model, its checkpoint and its embeddings."""
    root = tmp_path_factory.mktemp('hub_data')
    g = torch.Generator().manual_seed(1)
    inputs = {'images': torch.randn(3, 3, 32, 32, generator=g), 'tokens': open_clip.get_tokenizer(TINY)(PROMPTS)}
    save_file(inputs, str(root / 'inputs.safetensors'))
    model = _tiny(0)
    image, text = _embed(model, inputs)
    (root / 'energy.json').write_text(json.dumps(_report()))
    # as `spikeclip zeroshot --output` writes it (figures chosen by the test)
    (root / 'zeroshot.json').write_text(json.dumps(dict(
        top1=0.4125, top5=0.8875, n=80, model=TINY, pretrained='tiny.safetensors', dataset='fashion-mnist',
        split='test', num_classes=10, num_templates=1)))
    return dict(root=root, inputs=inputs, model=model, image=image, text=text,
                ckpt=_checkpoint(model, root / 'tiny.safetensors'))


@pytest.fixture(scope='module')
def published(server, data, tmp_path_factory):
    """``spikeclip push`` of the tiny checkpoint to org/spikeclip-tiny, token on the command line."""
    home = tmp_path_factory.mktemp('push_home')
    root = data['root']
    proc = _run(['-m', 'open_clip_spike', 'push', TINY, '--checkpoint', str(data['ckpt']),
                 '--repo-id', 'org/spikeclip-tiny', '--energy-report', str(root / 'energy.json'),
                 '--zeroshot-results', str(root / 'zeroshot.json'), '--token', TOKEN], _env(server, home))
    return dict(proc=proc, home=home, repo_id='org/spikeclip-tiny')


@pytest.fixture(scope='module')
def downloaded(server, data, published, tmp_path_factory):
    """Loads of the published repo through the four paths, into a fresh cache."""
    assert published['proc'].returncode == 0, published['proc'].stderr[-4000:]
    home = tmp_path_factory.mktemp('download_home')
    out = data['root'] / 'downloaded.safetensors'
    spec = dict(repo_id=published['repo_id'], inputs=str(data['root'] / 'inputs.safetensors'), out=str(out),
                loads=[dict(key='open_clip_hf', how='open_clip_hf'), dict(key='timm_hf', how='timm_hf'),
                       dict(key='helper', how='helper'), dict(key='helper_timm', how='helper_timm')])
    requests_before = len(server.requests)
    result = _client('load', spec, _env(server, home))
    return dict(home=home, result=result, out=load_file(str(out)), spec=spec,
                requests=server.requests[requests_before:])


# ----------------------------------------------------------------------------------------------------------------
# Writing the folder (no network)


def test_cli_registers_push():
    assert COMMANDS['push'][0] == 'open_clip_spike.cli.push'


def test_write_hub_folder_layout_metadata_and_card(data, tmp_path):
    folder = hub.write_hub_folder(tmp_path / 'repo', data['model'], TINY, energy_report=_report(),
                                  zeroshot_results={'fashion-mnist': {'top1': 0.4125, 'top5': 0.8875}},
                                  training={'teacher': 'ViT-B-16 openai', 'epochs': 3}, repo_id='org/tiny')
    assert sorted(p.name for p in folder.iterdir()) == [
        'README.md', 'config.json', 'energy.json', 'model.safetensors', 'open_clip_config.json',
        'open_clip_model.safetensors', 'spikeclip_files.json']
    # open_clip layout: the registered config + the whole state dict
    oc = json.loads((folder / 'open_clip_config.json').read_text())
    assert oc['model_cfg'] == open_clip.get_model_config(TINY)
    assert oc['preprocess_cfg']['size'] == [32, 32]
    with safe_open(str(folder / 'open_clip_model.safetensors'), 'pt') as f:
        meta = f.metadata()
        assert set(f.keys()) == set(data['model'].state_dict())
    assert meta['model_name'] == TINY and meta['architecture'] == 'spikingformer_clip' and meta['T'] == '4'
    assert float(meta['energy_mj_per_image']) == 0.0123 and float(meta['ann_energy_mj_per_image']) == 0.0861
    # timm layout: architecture, the arguments that rebuild the tiny tower, weights of the tower only
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == 'spikingformer_clip' and cfg['num_classes'] == 512
    assert {k: cfg['model_args'][k] for k in ('embed_dim', 'depth', 'num_heads', 'T')} == \
        {'embed_dim': 128, 'depth': 1, 'num_heads': 4, 'T': 4}
    assert cfg['spikeclip']['energy_mj_per_image'] == 0.0123
    with safe_open(str(folder / 'model.safetensors'), 'pt') as f:
        assert set(f.keys()) == set(data['model'].visual.trunk.state_dict())
        assert f.metadata()['part'] == 'image_encoder'
    assert json.loads((folder / 'energy.json').read_text()) == _report()
    # the card: front matter the Hub parses, loading instructions, energy ratios, zero-shot, recipe
    from huggingface_hub import ModelCard
    card = ModelCard.load(folder / 'README.md')
    assert card.data.library_name == 'open_clip' and {'timm', 'open_clip'} <= set(card.data.tags)
    assert "create_model_and_transforms('hf-hub:org/tiny')" in card.text
    assert "timm.create_model('hf-hub:org/tiny', pretrained=True)" in card.text
    assert f'{0.0861 / 0.0123:.2f}x' in card.text and f'{0.91 / 0.0123:.1f}x' in card.text
    assert '| fashion-mnist | 0.4125 | 0.8875 |' in card.text
    assert '**teacher**: ViT-B-16 openai' in card.text and '`blocks.0.mlp.fc1_conv`' in card.text
    assert 'the text encoder is a spiking MLP' in card.text


def test_card_names_a_transformer_text_tower(tmp_path):
    model = open_clip.create_model('SpikeCLIP-Tiny-TextTransformer')
    folder = hub.write_hub_folder(tmp_path / 'repo', model, 'SpikeCLIP-Tiny-TextTransformer', verify=False)
    assert 'the text encoder is a spiking transformer' in (folder / 'README.md').read_text()


def test_folder_loads_in_both_libraries_with_identical_embeddings(data, tmp_path):
    folder = hub.write_hub_folder(tmp_path / 'repo', data['model'], TINY)
    model, _, preprocess = open_clip.create_model_and_transforms(f'local-dir:{folder}')
    image, text = _embed(model.eval(), data['inputs'])
    assert torch.equal(image, data['image']) and torch.equal(text, data['text'])
    encoder = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(encoder(data['inputs']['images']), data['image'])
    # the comparison can fail: another model's embeddings differ, and the inputs give distinct embeddings
    other_image, _ = _embed(_variant(data['model'], 5), data['inputs'])
    assert not torch.allclose(other_image, data['image'])
    assert not torch.allclose(data['image'][0], data['image'][1])


def test_write_from_open_clip_train_checkpoint(data, tmp_path):
    # open_clip_train saves {'epoch', 'name', 'state_dict' (DDP 'module.' keys), 'optimizer'} with torch.save
    sd = {f'module.{k}': v for k, v in data['model'].state_dict().items()}
    torch.save({'epoch': 3, 'name': 'run', 'state_dict': sd, 'optimizer': {'state': {}, 'param_groups': []}},
               tmp_path / 'epoch_3.pt')
    folder = hub.write_hub_folder(tmp_path / 'repo', tmp_path / 'epoch_3.pt', TINY)
    reloaded = load_file(str(folder / 'open_clip_model.safetensors'))
    assert all(torch.equal(reloaded[k], v) for k, v in data['model'].state_dict().items())
    with pytest.raises(ValueError, match='model_name is needed'):
        hub.write_hub_folder(tmp_path / 'repo2', tmp_path / 'epoch_3.pt')
    with pytest.raises(ValueError, match='does not fit SpikeCLIP-Spikingformer-4-384'):
        hub.write_hub_folder(tmp_path / 'repo3', data['ckpt'], 'SpikeCLIP-Spikingformer-4-384', verify=False)
    with pytest.raises(ValueError, match="Unknown open_clip model 'SpikeCLIP-Nope'"):
        hub.write_hub_folder(tmp_path / 'repo4', data['ckpt'], 'SpikeCLIP-Nope')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['epoch_3.pt', 'repo']


def test_publishes_a_measured_energy_report(data, tmp_path):
    # the report as `spikeclip energy` writes it (both towers), measured on the test images
    from open_clip_spike.energy import spikeclip_energy_report
    measured = spikeclip_energy_report(data['model'], data['inputs']['images'], data['inputs']['tokens'],
                                       model_name=TINY, progress=False).to_dict()
    folder = hub.write_hub_folder(tmp_path / 'repo', data['model'], TINY, energy_report=measured, verify=False)
    assert json.loads((folder / 'energy.json').read_text()) == measured
    card = (folder / 'README.md').read_text()
    snn, ann = measured['energy_mj_per_image'], measured['ann_energy_mj_per_image']
    assert f'| {hub.card._fmt(snn)} | 1 |' in card and f'{ann / snn:.2f}x' in card
    assert f"| {hub.card._fmt(measured['text']['energy_mj_per_prompt'])} | 1 |" in card
    with safe_open(str(folder / 'model.safetensors'), 'pt') as f:
        assert float(f.metadata()['energy_mj_per_image']) == snn


def test_model_built_with_overrides_needs_its_config(data, tmp_path):
    # same weights, another computation (a lower threshold): only comparing embeddings catches it
    wrong = dict(open_clip.get_model_config(TINY), lif_cfg={'v_threshold': 0.5})
    with pytest.raises(RuntimeError, match='open_clip image embeddings of the reloaded folder differ'):
        hub.write_hub_folder(tmp_path / 'c', data['model'], TINY, model_cfg=wrong)
    model = open_clip.create_model(TINY, T=2).eval()
    with pytest.raises(ValueError, match="runs T=2 but its config 'SpikeCLIP-Tiny' says T=4"):
        hub.write_hub_folder(tmp_path / 'a', model, TINY)
    cfg = dict(open_clip.get_model_config(TINY), T=2)
    folder = hub.write_hub_folder(tmp_path / 'b', model, TINY, model_cfg=cfg)  # verified: same embeddings
    assert json.loads((folder / 'open_clip_config.json').read_text())['model_cfg']['T'] == 2
    assert json.loads((folder / 'config.json').read_text())['model_args']['T'] == 2
    assert open_clip.create_model(f'local-dir:{folder}').T == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['b']


def test_write_is_atomic(data, tmp_path, monkeypatch):
    target = tmp_path / 'repo'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        hub.write_hub_folder(target, data['model'], TINY)
    with pytest.raises(ValueError, match='T=2 but the model runs T=4'):
        hub.write_hub_folder(tmp_path / 'new', data['model'], TINY, energy_report=_report(T=2))

    def broken_verify(*args, **kwargs):
        raise RuntimeError('reload differs')
    from open_clip_spike.hub import publish
    monkeypatch.setattr(publish, '_verify_folder', broken_verify)
    with pytest.raises(RuntimeError, match='reload differs'):
        hub.write_hub_folder(target, data['model'], TINY, overwrite=True)
    # nothing half-written: the old folder is untouched, no temporary folder is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ['repo']
    assert [p.name for p in target.iterdir()] == ['keep.txt']
    monkeypatch.undo()
    hub.write_hub_folder(target, data['model'], TINY, overwrite=True)
    # a file spikeclip did not write is kept (tests/faults/test_integrity.py: the warning naming it)
    assert (target / 'keep.txt').read_text() == 'mine' and (target / 'model.safetensors').is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['repo']


def _dead_pid() -> int:
    """The id of a process that has exited (what a killed writer leaves behind)."""
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_republish_survives_kills_and_leaves_no_litter(data, tmp_path, monkeypatch):
    from open_clip_spike.hub import publish
    target = tmp_path / 'repo'
    hub.write_hub_folder(target, data['model'], TINY, energy_report=_report(snn=0.01), verify=False)
    # What kills leave: a temporary folder of a write killed before its swap, and the previous version set aside
    # by a write killed between the two renames of the fallback swap (the target itself is missing).
    dead = _dead_pid()
    (tmp_path / f'.repo.tmp-{dead}-abc').mkdir()
    (tmp_path / f'.repo.tmp-{dead}-abc' / 'open_clip_model.safetensors').write_bytes(b'half')
    os.replace(target, tmp_path / f'.repo.old.tmp-{dead}-folder')
    seen = {}

    def at(point):  # the next write first restores the previous version, then swaps the new one in
        if point == 'hub.write':
            seen['energy'] = json.loads((target / 'energy.json').read_text())['energy_mj_per_image']
    monkeypatch.setattr(publish, 'fault_point', at)
    hub.write_hub_folder(target, data['model'], TINY, energy_report=_report(snn=0.02), overwrite=True, verify=False)
    assert seen['energy'] == 0.01
    assert json.loads((target / 'energy.json').read_text())['energy_mj_per_image'] == 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ['repo']
    # published files get the permissions of normally created ones (mkstemp/mkdtemp make 0600/0700)
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in target.iterdir()} == {oct(0o666 & ~umask)}
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask

    # Ctrl-C at the last moment before the swap: the old version stays whole, nothing is left
    def interrupt(point):
        if point == 'hub.write':
            raise KeyboardInterrupt
    monkeypatch.setattr(publish, 'fault_point', interrupt)
    with pytest.raises(KeyboardInterrupt):
        hub.write_hub_folder(target, data['model'], TINY, energy_report=_report(snn=0.03), overwrite=True,
                             verify=False)
    assert json.loads((target / 'energy.json').read_text())['energy_mj_per_image'] == 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ['repo']
    # where the file system cannot exchange two folders, two renames (recovered as above if killed between)
    monkeypatch.setattr(publish, 'fault_point', lambda point: None)
    monkeypatch.setattr(publish, '_rename_exchange', lambda a, b: False)
    hub.write_hub_folder(target, data['model'], TINY, energy_report=_report(snn=0.04), overwrite=True, verify=False)
    assert json.loads((target / 'energy.json').read_text())['energy_mj_per_image'] == 0.04
    assert sorted(p.name for p in tmp_path.iterdir()) == ['repo']


@pytest.mark.parametrize('change, message', [
    (dict(drop='layers'), r"lacks the keys \['layers'\]"),
    (dict(energy_mj_per_image=-1.0), 'energy_mj_per_image must be a positive number'),
    (dict(ann_energy_mj_per_image='a lot'), 'ann_energy_mj_per_image must be a positive number'),
    (dict(T=0), 'T must be a positive integer'),
    (dict(sample='prompt'), "per 'prompt'"),
])
def test_energy_report_validation(change, message):
    report = _report()
    report.pop(change.pop('drop', None), None)
    report.update(change)
    with pytest.raises(ValueError, match=message):
        hub.validate_energy_report(report)


def test_zeroshot_results_formats(data, tmp_path):
    rows = hub.card.zeroshot_rows([dict(top1=0.5, top5=0.9, dataset='cifar10', model=TINY), dict(top1=0.25)])
    assert rows == [('cifar10', {'top1': 0.5, 'top5': 0.9}), ('dataset', {'top1': 0.25})]
    assert hub.card.zeroshot_rows({'stl10': 0.7}) == [('stl10', {'top1': 0.7})]
    with pytest.raises(ValueError, match='needs at least "top1"'):
        hub.write_hub_folder(tmp_path / 'x', data['model'], TINY, zeroshot_results=[{'top5': 0.9}])
    assert not list(tmp_path.iterdir())


def test_energy_report_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='Energy report not found'):
        hub.validate_energy_report(tmp_path / 'none.json')
    (tmp_path / 'bad.json').write_text('{not json')
    with pytest.raises(ValueError, match='not valid JSON'):
        hub.validate_energy_report(tmp_path / 'bad.json')
    (tmp_path / 'ok.json').write_text(json.dumps(_report()))
    assert hub.validate_energy_report(tmp_path / 'ok.json') == _report()


def test_cli_local_dir_writes_without_network(data, tmp_path, capsys):
    rc = push_main([TINY, '--checkpoint', str(data['ckpt']), '--local-dir', str(tmp_path / 'out'),
                   '--energy-report', str(data['root'] / 'energy.json')])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"local-dir:{tmp_path / 'out'}" in out
    encoder = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(encoder(data['inputs']['images']), data['image'])
    # an existing folder is refused with a clear message and exit status 2
    rc = push_main([TINY, '--checkpoint', str(data['ckpt']), '--local-dir', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 2 and 'exists' in err and '--overwrite' in err
    with pytest.raises(SystemExit):
        push_main([TINY, '--checkpoint', str(data['ckpt'])])  # neither --repo-id nor --local-dir
    assert 'give --repo-id' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Against the local Hub (real huggingface_hub client in a subprocess)


def test_push_cli_uploads_one_commit_and_never_shows_the_token(server, published):
    proc = published['proc']
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert TOKEN not in proc.stdout + proc.stderr
    repo = server.repos['org/spikeclip-tiny']
    commit = repo.commits[repo.branches['main']]
    assert f'commit {commit.oid}' in proc.stdout
    assert sorted(commit.files) == ['.gitattributes', 'README.md', 'config.json', 'energy.json',
                                    'model.safetensors', 'open_clip_config.json', 'open_clip_model.safetensors',
                                    'spikeclip_files.json']
    assert len(repo.commits) == 2  # the repo's initial commit + one upload
    writes = [r for r in server.requests if r['method'] == 'POST' and 'spikeclip-tiny' in str(r['path'])]
    assert writes and all(r['authorized'] for r in writes)
    assert not [p for p, b in commit.files.items() if TOKEN.encode() in b]
    assert '| fashion-mnist (test) | 0.4125 | 0.8875 | 80 | 10 | 1 |' in commit.files['README.md'].decode()
    assert not _files_containing(published['home'], TOKEN.encode())


def test_download_into_fresh_cache_gives_identical_embeddings(data, downloaded):
    out = downloaded['out']
    for key in ('open_clip_hf', 'helper'):
        assert torch.equal(out[f'{key}.image'], data['image']), key
        assert torch.equal(out[f'{key}.text'], data['text']), key
        assert torch.equal(out[f'{key}.tokens'], data['inputs']['tokens']), key
    for key in ('timm_hf', 'helper_timm'):
        assert torch.equal(out[f'{key}.image'], data['image']), key
    snapshot = Path(downloaded['result']['helper']['folder'])
    assert snapshot.is_relative_to(downloaded['home'])
    assert {'open_clip_config.json', 'open_clip_model.safetensors', 'energy.json', 'README.md'} <= \
        {p.name for p in snapshot.iterdir()}
    assert any(r['method'] == 'GET' and r['path'].endswith('/open_clip_model.safetensors')
               for r in downloaded['requests'])


def test_offline_reload_from_cache_makes_no_request(server, data, downloaded):
    n = len(server.requests)
    # ... and, in the same process, a download into an empty cache: a clear error
    spec = dict(downloaded['spec'], out=str(data['root'] / 'offline.safetensors'), cases=[
        dict(key='empty_cache', call='download', repo_id='org/spikeclip-tiny',
             cache_dir=str(data['root'] / 'empty_cache'))])
    result = _client('load', spec, _env(server, downloaded['home'], HF_HUB_OFFLINE='1'))
    assert len(server.requests) == n
    out = load_file(spec['out'])
    for key in ('open_clip_hf', 'timm_hf', 'helper', 'helper_timm'):
        assert torch.equal(out[f'{key}.image'], data['image']), key
    assert torch.equal(out['helper.text'], data['text'])
    assert result['empty_cache']['error'] == 'FileNotFoundError'
    assert 'not in the cache and the Hub cannot be reached' in result['empty_cache']['message']


def test_revisions_push_twice_and_load_each(server, data, tmp_path):
    models = {name: _variant(data['model'], seed) for name, seed in (('v1', 11), ('v2', 12), ('exp', 13))}
    for name, m in models.items():
        _checkpoint(m, tmp_path / f'{name}.safetensors')
    spec = dict(
        repo_id='org/spikeclip-rev', inputs=str(data['root'] / 'inputs.safetensors'),
        out=str(tmp_path / 'rev.safetensors'), local_dir=str(tmp_path / 'kept'),
        pushes=[dict(ckpt=str(tmp_path / 'v1.safetensors'), energy=str(data['root'] / 'energy.json')),
                dict(ckpt=str(tmp_path / 'v2.safetensors')),
                dict(ckpt=str(tmp_path / 'exp.safetensors'), revision='exp')])
    # a repo that already holds pickled weights and a file of the user's: the upload replaces the first only
    server.create_repo('org/spikeclip-rev')
    server.commit('org/spikeclip-rev', {'open_clip_pytorch_model.bin': b'stale pickle', 'notes.txt': b'mine'})
    # token from HF_TOKEN; legacy single-commit upload path (without hf_xet)
    result = _client('push_and_load', spec, _env(server, tmp_path / 'home', HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET='1'))
    v1, v2, exp = result['commits']
    repo = server.repos['org/spikeclip-rev']
    assert repo.branches['main'] == v2 and repo.branches['exp'] == exp and repo.commits[v2].parent == v1
    files = {oid: set(repo.commits[oid].files) for oid in (v1, v2)}
    assert 'energy.json' in files[v1] and 'energy.json' not in files[v2]  # v2 was pushed without a report
    assert all('notes.txt' in f and 'open_clip_pytorch_model.bin' not in f for f in files.values())
    assert result['wrong_token'].startswith('HfHubHTTPError') and 'hf_wrongToken' not in result['wrong_token']
    assert server.repos['org/private'].private
    assert result['private'] == {'anonymous': {'error': 'RepositoryNotFoundError',
                                               'message': result['private']['anonymous']['message']},
                                 'with_token': {'error': None}}
    out = load_file(spec['out'])
    expected = {name: _embed(m, data['inputs']) for name, m in models.items()}
    assert torch.equal(out['first_commit.image'], expected['v1'][0])
    assert torch.equal(out['first_commit.text'], expected['v1'][1])
    assert torch.equal(out['main.image'], expected['v2'][0])
    assert torch.equal(out['branch.text'], expected['exp'][1])
    assert torch.equal(out['timm_first_commit.image'], expected['v1'][0])
    assert torch.equal(out['timm_branch.image'], expected['exp'][0])
    assert not torch.allclose(expected['v1'][0], expected['v2'][0])
    assert not _files_containing(tmp_path / 'kept', TOKEN.encode())
    assert not _files_containing(tmp_path / 'home', TOKEN.encode())


def test_download_errors(server, data, tmp_path):
    folder = hub.write_hub_folder(tmp_path / 'good', data['model'], TINY, verify=False)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}

    def seed(repo_id, changes, drop=()):
        server.create_repo(repo_id)
        server.commit(repo_id, {k: v for k, v in {**files, **changes}.items() if k not in drop})

    seed('org/only-readme', {}, drop=[k for k in files if k != 'README.md'])
    seed('org/no-weights', {}, drop=['open_clip_model.safetensors'])
    cfg = json.loads(files['config.json'])
    cfg['architecture'] = 'spikingformer_nope'
    seed('org/unknown-model', {'config.json': json.dumps(cfg).encode()})
    oc = json.loads(files['open_clip_config.json'])
    oc['model_cfg']['model_class'] = 'SpikeCLIPv9'
    seed('org/unknown-class', {'open_clip_config.json': json.dumps(oc).encode()})
    seed('org/corrupt', {'open_clip_model.safetensors': files['open_clip_model.safetensors'][:1000]})
    buf = data['root'] / 'pickled.bin'
    torch.save(data['model'].state_dict(), buf)
    seed('org/pickled', {'open_clip_pytorch_model.bin': buf.read_bytes()},
         drop=['open_clip_model.safetensors', 'model.safetensors', 'config.json'])
    cases = [
        dict(key='missing_repo', call='download', repo_id='org/does-not-exist'),
        dict(key='missing_file', call='download', repo_id='org/only-readme'),
        dict(key='missing_weights', call='download', repo_id='org/no-weights'),
        dict(key='missing_revision', call='download', repo_id='org/only-readme', revision='v9'),
        dict(key='unknown_model', call='download', repo_id='org/unknown-model'),
        dict(key='unknown_class', call='load_spikeclip', repo_id='org/unknown-class'),
        dict(key='corrupt', call='download', repo_id='org/corrupt'),
        dict(key='pickled', call='load_spikeclip', repo_id='org/pickled'),
        dict(key='pickled_allowed', call='load_spikeclip', repo_id='org/pickled', allow_pickle=True),
    ]
    spec = dict(cases=cases, inputs=str(data['root'] / 'inputs.safetensors'),
                errors_out=str(tmp_path / 'err.safetensors'))
    r = _client('errors', spec, _env(server, tmp_path / 'home'))
    assert r['missing_repo']['error'] == 'RepositoryNotFoundError'
    assert r['missing_file']['error'] == 'FileNotFoundError'
    assert 'has no open_clip_config.json, so it is not an open_clip model' in r['missing_file']['message']
    assert r['missing_weights']['error'] == 'FileNotFoundError'
    assert 'has no open_clip_model.safetensors (SpikeCLIP weights)' in r['missing_weights']['message']
    assert r['missing_revision']['error'] == 'RevisionNotFoundError'
    assert r['unknown_model']['error'] == 'ValueError'
    assert "names the model 'spikingformer_nope'" in r['unknown_model']['message']
    assert r['unknown_class']['error'] == 'ValueError' and "model class 'SpikeCLIPv9'" in r['unknown_class']['message']
    assert r['corrupt']['error'] == 'ValueError' and 'not a valid safetensors file' in r['corrupt']['message']
    assert r['pickled']['error'] == 'PickledWeightsError'
    assert 'open_clip_pytorch_model.bin' in r['pickled']['message'] and 'allow_pickle=True' in r['pickled']['message']
    assert r['pickled_allowed']['error'] is None
    out = load_file(spec['errors_out'])
    assert torch.equal(out['pickled_allowed.image'], data['image'])


# ----------------------------------------------------------------------------------------------------------------
# Client side: this file run as a script in a subprocess whose HF_ENDPOINT points at the test Hub


def _client_load(spec):
    from open_clip_spike import hub as hub_
    inputs = load_file(spec['inputs'])
    out, result = {}, {}
    repo = spec['repo_id']
    with torch.no_grad():
        for load in spec['loads']:
            key, how, rev = load['key'], load['how'], load.get('revision')
            if how in ('open_clip_hf', 'helper'):
                if how == 'open_clip_hf':
                    assert rev is None, "open_clip's hf-hub: path has no revision"
                    model, _, _ = open_clip.create_model_and_transforms(f'hf-hub:{repo}')
                    tok = open_clip.get_tokenizer(f'hf-hub:{repo}')
                else:
                    model, _, tok = hub_.load_spikeclip(repo, revision=rev)
                    result[key] = dict(folder=str(hub_.download_from_hub(repo, revision=rev, timm_files=False)))
                model.eval()
                tokens = tok(PROMPTS)
                out[f'{key}.tokens'] = tokens
                out[f'{key}.image'] = model.encode_image(inputs['images'])
                out[f'{key}.text'] = model.encode_text(tokens)
            elif how == 'timm_hf':
                enc = timm.create_model(f'hf-hub:{repo}' + (f'@{rev}' if rev else ''), pretrained=True).eval()
                out[f'{key}.image'] = enc(inputs['images'])
            elif how == 'helper_timm':
                out[f'{key}.image'] = hub_.load_image_encoder(repo, revision=rev)(inputs['images'])
    save_file({k: v.contiguous() for k, v in out.items()}, spec['out'])
    if spec.get('cases'):
        result.update(_client_errors(spec))
    return result


def _client_push_and_load(spec):
    from open_clip_spike import hub as hub_
    commits = []
    for i, push in enumerate(spec['pushes']):
        info = hub_.push_to_hub(push['ckpt'], spec['repo_id'], TINY, revision=push.get('revision'),
                                energy_report=push.get('energy'),
                                local_dir=spec['local_dir'] if i == 0 else None, verify=i == 0)
        commits.append(info.oid)
    try:
        hub_.push_to_hub(spec['pushes'][0]['ckpt'], spec['repo_id'], TINY, token='hf_wrongToken', verify=False)
        wrong = 'no error'
    except Exception as e:
        wrong = f'{type(e).__name__}: {e}'
    # a private repo: readable with the token (HF_TOKEN), like a missing repo without it
    hub_.push_to_hub(spec['pushes'][0]['ckpt'], 'org/private', TINY, private=True, verify=False)
    private = _client_errors(dict(cases=[
        dict(key='anonymous', call='download', repo_id='org/private', token=False),
        dict(key='with_token', call='download', repo_id='org/private')]))
    spec = dict(spec, loads=[
        dict(key='first_commit', how='helper', revision=commits[0]), dict(key='main', how='helper'),
        dict(key='branch', how='helper', revision='exp'),
        dict(key='timm_first_commit', how='timm_hf', revision=commits[0]),
        dict(key='timm_branch', how='timm_hf', revision='exp')])
    _client_load(spec)
    return dict(commits=commits, wrong_token=wrong, private=private)


def _client_errors(spec):
    from open_clip_spike import hub as hub_
    result, out = {}, {}
    inputs = load_file(spec['inputs']) if 'inputs' in spec else None
    for case in spec['cases']:
        kwargs = {k: case[k] for k in ('revision', 'allow_pickle', 'cache_dir', 'token') if k in case}
        try:
            if case['call'] == 'download':
                hub_.download_from_hub(case['repo_id'], **kwargs)
            else:
                model, _, _ = hub_.load_spikeclip(case['repo_id'], **kwargs)
                with torch.no_grad():
                    out[f"{case['key']}.image"] = model.encode_image(inputs['images'])
            result[case['key']] = dict(error=None)
        except Exception as e:
            result[case['key']] = dict(error=type(e).__name__, message=str(e))
    if out:
        save_file(out, spec['errors_out'])
    return result


if __name__ == '__main__':
    torch.set_num_threads(int(os.environ.get('SPIKECLIP_TEST_THREADS', '1')))
    scenario, spec_json = sys.argv[1], sys.argv[2]
    res = {'load': _client_load, 'push_and_load': _client_push_and_load, 'errors': _client_errors}[scenario](
        json.loads(spec_json))
    print(json.dumps(res))
