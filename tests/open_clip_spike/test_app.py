"""The zero-shot page (open_clip_spike.app, ``spikeclip app``): the classification function without a page, the
command serving it on 127.0.0.1, bad input through the function and through the page, and the page in a real
browser (Debian's Chromium driven by Playwright), whose answer must be ``spikeclip zeroshot``'s.

One SpikeCLIP-Tiny (BatchNorm statistics from Fashion-MNIST test images, so its neurons fire and the images get
different embeddings) is published as a Hub folder with a measured energy report; the app loads it as
``local-dir:``. The command runs once, in a subprocess, for the whole module.
"""
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2

import open_clip_spike  # noqa: F401  (registers SpikeCLIP with open_clip)
from open_clip_spike.app import ZeroShotApp, load_image, parse_names, parse_templates
from open_clip_spike.cli import COMMANDS
from open_clip_spike.data import CLASSNAMES, IDXDataset
from open_clip_spike.zero_shot import zeroshot

TINY = 'SpikeCLIP-Tiny'
TEACHER = 'SpikeCLIP-DemoTeacher'
FASHION_MNIST = Path(__file__).parents[1] / 'fixtures' / 'fashion_mnist'
NAMES = list(CLASSNAMES['fashion_mnist'])
SERVER_TIMEOUT = 240


# ----------------------------------------------------------------------------------------------------------------
# Fixtures


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    """A calibrated SpikeCLIP-Tiny as a Hub folder with a measured energy report, and four test images as PNGs."""
    from open_clip_spike.energy import class_prompts, clip_teacher_energy, spikeclip_energy_report
    from open_clip_spike.hub import write_hub_folder

    root = tmp_path_factory.mktemp('app')
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), False)
    data = IDXDataset(FASHION_MNIST, 'test', transform=preprocess)
    images = torch.stack([data[i][0] for i in range(0, 200, 20)])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model.encode_image(images)
    model.eval()
    prompts = class_prompts(NAMES)
    report = spikeclip_energy_report(model, images, open_clip.get_tokenizer(TINY)(prompts), model_name=TINY,
                                     teacher=clip_teacher_energy(TEACHER, prompts), progress=False).to_dict()
    folder = write_hub_folder(root / 'hub', model, TINY, energy_report=report, verify=False)
    raw = IDXDataset(FASHION_MNIST, 'test')
    paths = []
    for i in (0, 1, 2, 18):  # ankle boot, pullover, trouser, bag
        paths.append(root / 'images' / f'{i}.png')
        paths[-1].parent.mkdir(exist_ok=True)
        raw[i][0].save(paths[-1])
    return dict(root=root, folder=folder, model=model, report=report, images=paths)


@pytest.fixture(scope='module')
def app(published):
    return ZeroShotApp(f"local-dir:{published['folder']}")


def _zeroshot_agrees(folder: Path, paths, labels, classnames, templates=None) -> float:
    """``spikeclip zeroshot``'s top-1 (its function, ``zero_shot.zeroshot``) on these images labelled ``labels``:
    1.0 exactly when its prediction is ``labels`` for every image. The images are read as its folders read them
    (torchvision's pil_loader) and transformed by the model's own transform."""
    _, _, preprocess = open_clip.create_model_and_transforms(f'local-dir:{folder}')
    images = torch.stack([preprocess(Image.open(p).convert('RGB')) for p in paths])
    data = TensorDataset(images, torch.tensor(labels))
    return zeroshot(f'local-dir:{folder}', dataset=data, classnames=classnames, templates=templates,
                    progress=False, batch_size=len(data))['top1']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def server(published, tmp_path_factory):
    """``spikeclip app`` in a subprocess on a free port of 127.0.0.1, run from an empty folder with its own Gradio
    temporary folder; yields its URL, the printed line and those folders; stopped as a service manager stops it
    (SIGTERM, handled as Ctrl-C)."""
    pytest.importorskip('gradio', reason="the page needs gradio (pip install 'spikeclip[app]')")
    base = tmp_path_factory.mktemp('server')
    cwd, gradio_tmp = base / 'cwd', base / 'gradio'
    cwd.mkdir()
    gradio_tmp.mkdir()
    port = _free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(gradio_tmp), GRADIO_ANALYTICS_ENABLED='False', HF_HUB_OFFLINE='1',
               NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost',
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen(
        [sys.executable, '-m', 'open_clip_spike', 'app', '--model', f"local-dir:{published['folder']}",
         '--port', str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + SERVER_TIMEOUT
    while not any(l.startswith('spikeclip app:') for l in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail('spikeclip app did not start:\n' + ''.join(lines)[-4000:])
        time.sleep(0.2)
    line = next(l for l in lines if l.startswith('spikeclip app:'))
    url = re.search(r'(http://[^\s,]+)', line).group(1).rstrip('/')
    before = {p: p.stat().st_mtime_ns for p in published['folder'].iterdir()}
    info = dict(url=url, port=port, line=line, cwd=cwd, gradio_tmp=gradio_tmp, proc=proc, lines=lines)
    yield info
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 0, ''.join(lines)[-3000:]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    # nothing written: the folder it ran from stays empty, the model folder unchanged, and Gradio's temporary
    # folder keeps only its copies of the page's example images (uploads are deleted on exit)
    assert not list(cwd.iterdir())
    assert {p: p.stat().st_mtime_ns for p in published['folder'].iterdir()} == before
    from open_clip_spike.app import example_images
    examples = {Path(e).name for e in example_images()}
    left = [p for p in gradio_tmp.rglob('*') if p.is_file() and p.name not in examples]
    assert not left, left
    assert not list(Path(open_clip_spike.__file__).parent.rglob('*.pyi'))  # no stubs written beside the package


# ----------------------------------------------------------------------------------------------------------------
# The function without a page


def test_cli_registers_app():
    assert COMMANDS['app'][0] == 'open_clip_spike.cli.app'


def test_classify_gives_zeroshots_prediction_and_probabilities(published, app):
    paths = published['images']
    results = [app.classify(p, 'fashion_mnist') for p in paths]
    labels = [NAMES.index(r.label) for r in results]
    # spikeclip zeroshot agrees on every image, and the check can fail: other labels are not all its answers
    assert _zeroshot_agrees(published['folder'], paths, labels, 'fashion_mnist') == 1.0
    assert _zeroshot_agrees(published['folder'], paths, [(y + 1) % 10 for y in labels], 'fashion_mnist') == 0.0
    # probabilities: the model's logit scale over the class embeddings of zero_shot.build_classifier
    from open_clip_spike.zero_shot import build_classifier
    model = published['model']
    clf = build_classifier(model, open_clip.get_tokenizer(TINY), 'fashion_mnist', 'fashion_mnist')
    _, _, preprocess = open_clip.create_model_and_transforms(TINY)
    for path, r in zip(paths, results):
        with torch.no_grad():
            x = preprocess(Image.open(path).convert('RGB'))[None]
            p = (model.logit_scale.exp() * F.normalize(model.encode_image(x), dim=-1) @ clf).softmax(-1)[0]
        top = p.topk(5)
        assert list(r.probabilities) == [NAMES[i] for i in top.indices]
        assert torch.allclose(torch.tensor(list(r.probabilities.values())), top.values, atol=1e-6)
        assert r.classnames == NAMES and r.templates == list(open_clip_spike.data.TEMPLATES['fashion_mnist'])
    assert results[0].probabilities != results[2].probabilities  # the images get their own answers


def test_classify_measures_this_image(published, app):
    from timm_spike.energy import EnergyConstants, energy_report
    model = published['model']
    _, _, preprocess = open_clip.create_model_and_transforms(TINY)
    reports = []
    for path in published['images'][:2]:
        r = app.classify(path, ['ankle boot', 'trouser'])
        x = preprocess(Image.open(path).convert('RGB'))[None]
        own = energy_report(model.visual, x, progress=False)
        assert (r.macs, r.sops, r.ann_macs) == (own.macs, own.sops, own.ann_macs)
        assert r.energy_mj == pytest.approx(EnergyConstants().energy_mj(r.macs, r.sops))
        assert r.firing_rates == {k.removeprefix('trunk.'): v for k, v in own.neurons.items()}
        assert len(r.firing_rates) == 11 and 0 < r.mean_firing_rate < 0.5
        assert r.ann_energy_mj > 5 * r.energy_mj and r.sops > 0
        assert r.seconds > 0 and r.T == 4 and r.device == 'cpu'
        reports.append(r)
    assert reports[0].sops != reports[1].sops  # measured on each image
    # the published report's figures: the measured one written by write_hub_folder, with the teacher
    rep, pub = published['report'], reports[0].published
    assert pub['energy_mj'] == rep['energy_mj_per_image'] and pub['teacher'] == TEACHER
    assert pub['teacher_energy_mj'] == rep['teacher_energy_mj_per_image'] > pub['energy_mj']
    assert pub['text_energy_mj'] == rep['text']['energy_mj_per_prompt']
    assert reports[0].text['prompts'] == 2 and reports[0].text['energy_mj'] > 0


def test_class_embeddings_are_cached_per_list(published):
    app = ZeroShotApp(f"local-dir:{published['folder']}", cache_size=2)
    image = published['images'][0]
    first = app.classify(image, 'cat, dog')
    again = app.classify(image, ['cat', 'dog'])
    assert not first.cached and again.cached and again.text_seconds == 0
    assert again.probabilities == first.probabilities
    assert not app.classify(image, 'cat, dog', ['a sketch of a {}.']).cached  # templates are part of the key
    assert not app.classify(image, 'cat, cow').cached
    assert not app.classify(image, 'cat, dog').cached  # evicted: two lists are kept


def test_page_text_never_names_a_file(published, app, tmp_path):
    secret = tmp_path / 'names.txt'
    secret.write_text('secret\n')
    assert parse_names(str(secret)) == [str(secret)]  # a class called like the path, not the file's lines
    assert parse_names(' cat, dog\nbird,, ') == ['cat', 'dog', 'bird']
    assert parse_templates('a photo of a {}.\n\n a drawing of a {}. ') == ['a photo of a {}.', 'a drawing of a {}.']
    r = app.classify(published['images'][0], parse_names(f'{secret}, dog'))
    assert set(r.probabilities) == {str(secret), 'dog'}


def _bomb(width: int, height: int) -> bytes:
    return _png(Image.new('1', (width, height)))  # a few KB of PNG, width x height pixels decoded


@pytest.mark.parametrize('image, message', [
    (b'this is not an image', 'not an image that PIL can read'),
    (b'', 'empty'),
    ('truncated', 'could not be decoded'),
    ('bomb', "PIL's decompression-bomb limit"),
    ('10000x10000', "PIL's decompression-bomb limit"),
    ('100000x1', 'crop it first'),
    ('missing', 'Image file not found'),
])
def test_bad_images_are_one_line_errors(published, app, image, message, tmp_path):
    if image == 'truncated':
        image = Path(published['images'][0]).read_bytes()[:100]
    elif image == 'bomb':
        image = _bomb(20000, 20000)  # 400 M pixels: over twice PIL's limit
    elif image == '10000x10000':
        image = _bomb(10000, 10000)  # 100 M pixels: over PIL's limit, where PIL only warns
    elif image == '100000x1':
        image = _png(Image.new('RGB', (100000, 1)))
    elif image == 'missing':
        image = tmp_path / 'none.png'
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        app.classify(image, 'cat, dog')
    assert '\n' not in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # PIL's limit is kept


def test_tiny_and_extreme_images_are_classified(app):
    for size in ((1, 1), (10000, 1)):
        img = Image.new('RGB', size, (120, 30, 200))
        r = app.classify(_png(img), 'cat, dog')
        assert abs(sum(r.probabilities.values()) - 1) < 1e-5
    import numpy as np
    gray = np.full((28, 28), 200, dtype=np.uint8)
    assert load_image(gray).mode == 'RGB' and load_image(gray).size == (28, 28)
    with pytest.raises(ValueError, match='uint8'):
        load_image(np.zeros((4, 4), dtype=np.float32))


@pytest.mark.parametrize('classnames, templates, message', [
    ('', None, 'No class names given'),
    ([], None, 'No class names given'),
    ([f'class {i}' for i in range(2000)], None, '2,000 class names: the page takes at most 1,000'),
    (['cat', 'dog', 'cat'], None, "Repeated class names: 'cat'"),
    (['cat', 'x' * 5000], None, 'Class name 2 is 5,000 characters long'),
    (['cat', 'dog'], ['a photo of a cat'], 'exactly one {}'),
    (['cat', 'dog'], ['a {} ' + 'y' * 300], 'Template 1 is 305 characters long'),
    ('imagenet', None, '1,000 classes x 80 templates = 80,000 prompts'),
    ('no_such_set', None, "Unknown class names 'no_such_set'"),
])
def test_bad_class_lists_are_one_line_errors(published, app, classnames, templates, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        app.classify(published['images'][0], classnames, templates)
    assert '\n' not in str(e.value)


def test_shipped_set_with_repeated_names_gets_distinct_labels(app):
    names, temps = app.resolve('imagenet', ['a photo of a {}.'])
    assert len(names) == 1000 and temps == ['a photo of a {}.']
    labels = app._labels(names)
    assert len(set(labels)) == 1000 and sum(l.startswith('missile (class ') for l in labels) == 2


def test_bad_model_names(published, tmp_path):
    with pytest.raises(ValueError, match='no open_clip_config.json'):
        ZeroShotApp(f'local-dir:{tmp_path}')
    with pytest.raises(ValueError, match="Unknown model 'SpikeCLIP-Nope'"):
        ZeroShotApp('SpikeCLIP-Nope')
    with pytest.raises(ValueError, match='not a SpikeCLIP'):
        ZeroShotApp(TEACHER)
    bare = tmp_path / 'bare.safetensors'
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in published['model'].state_dict().items()}, str(bare))
    with pytest.raises(ValueError, match='--model SpikeCLIP-Tiny --pretrained'):
        ZeroShotApp(str(bare))
    with pytest.raises(FileNotFoundError, match='Checkpoint not found'):
        ZeroShotApp(str(tmp_path / 'none.safetensors'))
    # a checkpoint that names its config (spikeclip push writes the name into the metadata) loads on its own
    named = ZeroShotApp(str(published['folder'] / 'open_clip_model.safetensors'))
    assert named.name == TINY and named.published['source'] == 'checkpoint metadata'
    assert named.published['energy_mj'] == published['report']['energy_mj_per_image']
    assert not list(tmp_path.glob('*.tmp*'))


# ----------------------------------------------------------------------------------------------------------------
# The command


def test_cli_without_gradio_names_the_extra(monkeypatch, capsys, published):
    from open_clip_spike.cli import app as cli
    monkeypatch.setitem(sys.modules, 'gradio', None)  # import gradio -> ImportError
    assert cli.main(['--model', f"local-dir:{published['folder']}"]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "pip install 'spikeclip[app]'" in err


def test_cli_bad_arguments_exit_2(capsys, tmp_path):
    pytest.importorskip('gradio')
    from open_clip_spike.cli import app as cli
    assert cli.main(['--model', f'local-dir:{tmp_path}']) == 2
    err = capsys.readouterr().err
    assert err.startswith('spikeclip app: error:') and 'no open_clip_config.json' in err and err.count('\n') == 1
    assert cli.main(['--model', TINY, '--port', '70000']) == 2
    assert '--port must be 1-65535' in capsys.readouterr().err


def test_cli_serves_this_machine_only_and_says_so(server):
    assert f"on {server['url']}/, bound to this machine only" in server['line']
    assert server['url'] == f"http://127.0.0.1:{server['port']}"
    import urllib.request
    with urllib.request.urlopen(server['url'], timeout=30) as r:
        assert r.status == 200 and b'gradio' in r.read().lower()
    # bound to 127.0.0.1 itself: another loopback address of this machine gets no answer
    with socket.socket() as s:
        s.settimeout(5)
        assert s.connect_ex(('127.0.0.2', server['port'])) != 0


def test_cli_port_in_use_is_one_line(server, published, capsys):
    from open_clip_spike.cli import app as cli
    assert cli.main(['--model', f"local-dir:{published['folder']}", '--port', str(server['port'])]) == 2
    err = capsys.readouterr().err
    assert err == f"spikeclip app: error: port {server['port']} of 127.0.0.1 is in use: choose another with --port\n"


def test_page_bad_inputs_concurrent_tabs_and_keeps_serving(server, published, app, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(server['url'], verbose=False)
    not_image = tmp_path / 'photo.png'
    not_image.write_text('not a picture')
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(_bomb(20000, 20000))
    good = handle_file(str(published['images'][0]))
    cases = [
        ((handle_file(str(not_image)), '', 'cat, dog', ''), 'not an image that PIL can read'),
        ((handle_file(str(bomb)), '', 'cat, dog', ''), "decompression-bomb limit"),
        ((good, '', '', ''), 'No class names given'),
        ((good, '', ', '.join(f'c{i}' for i in range(2000)), ''), 'at most 1,000'),
        ((good, '', 'cat, cat', ''), "Repeated class names: 'cat'"),
        ((good, '', 'cat, ' + 'z' * 1000, ''), 'characters long'),
        ((good, '', 'cat, dog', 'no placeholder'), 'exactly one {}'),
    ]
    for args, message in cases:
        with pytest.raises(Exception) as e:
            client.predict(*args, api_name='/classify')
        assert type(e.value).__name__ == 'AppError' and message in str(e.value), (message, e.value)
    # several tabs at once: each gets the answer of its own image, the one the function gives
    paths = published['images']
    expected = [app.classify(p, 'fashion_mnist').label for p in paths]
    answers = [None] * len(paths)

    def tab(i):
        answers[i] = Client(server['url'], verbose=False).predict(
            handle_file(str(paths[i])), 'fashion_mnist', '', '', api_name='/classify')[0]['label']
    threads = [threading.Thread(target=tab, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == expected
    assert server['proc'].poll() is None  # still serving


def _chromium():
    for name in ('chromium', 'chromium-browser'):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_page_in_a_real_browser(server, published, app, tmp_path):
    """Upload an image, type class names, read the answer from the page: spikeclip zeroshot's."""
    sync_api = pytest.importorskip('playwright.sync_api', reason='Playwright drives the browser (pip install playwright)')
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium: install Debian's chromium (make browser, or apt-get install chromium)")
    names = 'T-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot'
    image = published['images'][2]  # a trouser
    classes = parse_names(names)
    # a second image with another answer (the function's), so that the page's change of answer can be waited for
    other = next(p for p in published['images'] if app.classify(p, classes).label != app.classify(image, classes).label)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            page.goto(server['url'])
            page.set_input_files('#image input[type=file]', str(image))
            page.fill('#classnames textarea', names)
            page.click('#classify')
            page.wait_for_function("document.querySelector('#stats').innerText.includes('Prediction')",
                                   timeout=60000)
            shown = page.inner_text('#label [data-testid="label-output-value"]').strip()
            stats = page.inner_text('#stats')
            # an image that is no image: the message on the page, then the page serves the next request
            bad = tmp_path / 'holiday.png'
            bad.write_text('not a picture')
            page.set_input_files('#image input[type=file]', str(bad))
            page.click('#classify')
            page.wait_for_selector('text=not an image that PIL can read', timeout=30000)
            page.set_input_files('#image input[type=file]', str(other))
            page.click('#classify')
            page.wait_for_function(
                f"document.querySelector('#label [data-testid=\"label-output-value\"]').innerText.trim() != "
                f"{json.dumps(shown)}", timeout=60000)
            second = page.inner_text('#label [data-testid="label-output-value"]').strip()
            page.set_input_files('#image input[type=file]', str(image))
            page.click('#classify')
            page.wait_for_function(
                f"document.querySelector('#label [data-testid=\"label-output-value\"]').innerText.trim() == "
                f"{json.dumps(shown)}", timeout=60000)
            shot = Path(os.environ.get('SPIKECLIP_APP_SCREENSHOT') or tmp_path / 'app.png')
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert _zeroshot_agrees(published['folder'], [image, other], [classes.index(shown), classes.index(second)],
                            classes) == 1.0
    assert f'Prediction: {shown}' in stats and 'same network as an ANN' in stats and TEACHER in stats
    with Image.open(shot) as png:
        assert png.width == 1280 and png.height > 600
