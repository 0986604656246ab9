import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip_spike.cli import main as cli_main
from open_clip_spike.data import IDXDataset, get_classnames, get_templates
from open_clip_spike.zero_shot import build_classifier, evaluate, zeroshot

TINY = 'SpikeCLIP-Tiny'
FIXTURE = Path(__file__).parents[1] / 'fixtures' / 'fashion_mnist'


class _Features(nn.Module):
    """A 'model' whose image embedding is its input: the classifier scores are known in advance."""

    def encode_image(self, x):
        return 3 * x


def _ranked_batch(targets, ranks, num_classes):
    # features where class `target` has rank `rank` among the classes (0 = best)
    feats = []
    for y, r in zip(targets, ranks):
        others = [c for c in range(num_classes) if c != y]
        order = others[:r] + [y] + others[r:]  # classes from best to worst
        f = torch.empty(num_classes)
        f[torch.tensor(order)] = torch.arange(num_classes, 0, -1, dtype=torch.float)
        feats.append(f)
    return torch.stack(feats), torch.tensor(targets)


def test_evaluate_exact_top1_top5():
    C = 7
    targets = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    ranks = [0, 0, 1, 4, 5, 6, 2, 0, 3, 5]  # top-1 hits: 3; top-5 hits (rank < 5): 7
    x, y = _ranked_batch(targets, ranks, C)
    loader = [(x[:6], y[:6]), (x[6:], y[6:].tolist())]  # two batches, labels as tensor and as list
    result = evaluate(_Features(), loader, torch.eye(C), progress=False)
    assert result == dict(top1=3 / 10, top5=7 / 10, n=10)
    # with 3 classes, "top-5" is top-3: every sample counts
    x3, y3 = _ranked_batch([0, 1, 2], [2, 1, 0], 3)
    assert evaluate(_Features(), [(x3, y3)], torch.eye(3), progress=False) == dict(top1=1 / 3, top5=1.0, n=3)


def test_evaluate_errors():
    x, y = _ranked_batch([0, 1], [0, 0], 3)
    with pytest.raises(ValueError, match='out of range'):
        evaluate(_Features(), [(x, torch.tensor([0, 5]))], torch.eye(3), progress=False)
    with pytest.raises(ValueError, match='empty'):
        evaluate(_Features(), [], torch.eye(3), progress=False)


def test_classifier_matches_prompt_embeddings(tiny_model, tiny_tokenizer):
    classes, templates = ['cat', 'dog', 'red car'], ['a photo of a {}.', 'art of the {}.']
    clf = build_classifier(tiny_model, tiny_tokenizer, classes, templates)
    assert clf.shape == (512, 3)
    for i, c in enumerate(classes):
        emb = torch.cat([tiny_model.encode_text(tiny_tokenizer([t.format(c)]), normalize=True) for t in templates])
        assert torch.allclose(clf[:, i], F.normalize(emb.mean(0), dim=0), atol=1e-5)


def test_class_embeddings_do_not_depend_on_class_order(tiny_model, tiny_tokenizer):
    names, templates = get_classnames('cifar10'), get_templates('stl10')
    ref = build_classifier(tiny_model, tiny_tokenizer, names, templates)
    perm = torch.randperm(len(names)).tolist()
    shuffled = build_classifier(tiny_model, tiny_tokenizer, [names[i] for i in perm], templates, classes_per_batch=3)
    assert torch.allclose(shuffled, ref[:, perm], atol=1e-5)
    # and repeated builds give the same result (no membrane potential carried between calls)
    assert torch.equal(build_classifier(tiny_model, tiny_tokenizer, names, templates), ref)


def test_build_classifier_uses_eval_mode_and_restores_it(tiny_tokenizer):
    model = open_clip.create_model(TINY).eval()
    ref = build_classifier(model, tiny_tokenizer, ['cat', 'dog'], ['a {}.'])
    model.train()
    assert torch.equal(build_classifier(model, tiny_tokenizer, ['cat', 'dog'], ['a {}.']), ref)
    assert model.training and all(m.training for m in model.modules())
    with pytest.raises(ValueError, match='exactly one'):
        build_classifier(model, tiny_tokenizer, ['cat'], ['a photo'])
    with pytest.raises(ValueError, match='No class names'):
        build_classifier(model, tiny_tokenizer, [], ['a {}.'])


def test_evaluate_real_model_on_its_own_image_embeddings(calibrated_tiny_model):
    # Classifier = the model's own embeddings of one image per class: every image must be classified as itself.
    model = calibrated_tiny_model
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), False)
    data = IDXDataset(FIXTURE, 'test', transform=preprocess)
    first = [data.targets.index(c) for c in range(10)]
    images = torch.stack([data[i][0] for i in first])
    assert images.shape == (10, 3, 32, 32)
    with torch.no_grad():
        clf = model.encode_image(images, normalize=True).T
    loader = DataLoader(Subset(data, first), batch_size=4)
    assert evaluate(model, loader, clf, progress=False) == dict(top1=1.0, top5=1.0, n=10)


def test_zeroshot_function_and_cli(tmp_path, tiny_checkpoint, capsys):
    path, _ = tiny_checkpoint
    result = zeroshot(TINY, path, FIXTURE, classnames='fashion_mnist', batch_size=4, limit=8, progress=False)
    assert result['n'] == 8 and result['num_classes'] == 10
    assert result['num_templates'] == len(get_templates('fashion_mnist'))  # defaults to the class set's templates
    assert 0 <= result['top1'] <= result['top5'] <= 1
    assert result['top1'] * 8 == round(result['top1'] * 8)

    out = tmp_path / 'res' / 'zs.json'
    rc = cli_main(['zeroshot', '--model', TINY, '--pretrained', path, '--dataset', str(FIXTURE),
                   '--classnames', 'fashion_mnist', '--batch-size', '3', '--limit', '8', '--output', str(out),
                   '--no-progress'])
    assert rc == 0
    written = json.loads(out.read_text())
    assert written == json.loads(capsys.readouterr().out)
    assert {k: written[k] for k in ('top1', 'top5', 'n')} == {k: result[k] for k in ('top1', 'top5', 'n')}
    assert written['model'] == TINY and written['split'] == 'test'
    assert not [p for p in out.parent.iterdir() if p.name != 'zs.json']  # no temp files left


def test_cli_errors(tmp_path, capsys):
    rc = cli_main(['zeroshot', '--model', TINY, '--dataset', str(FIXTURE), '--no-progress'])
    assert rc == 2 and 'No class names' in capsys.readouterr().err  # IDX files carry no class names
    rc = cli_main(['zeroshot', '--model', 'SpikeCLIP-Nope', '--dataset', str(FIXTURE), '--no-progress'])
    assert rc == 2 and 'SpikeCLIP-Nope' in capsys.readouterr().err
    rc = cli_main(['zeroshot', '--model', TINY, '--pretrained', str(tmp_path / 'missing.safetensors'),
                   '--dataset', str(FIXTURE), '--classnames', 'fashion_mnist', '--no-progress'])
    assert rc == 2 and 'missing.safetensors' in capsys.readouterr().err


def test_bf16_autocast_stays_close_to_fp32(calibrated_tiny_model, tiny_tokenizer):
    model = calibrated_tiny_model
    names, templates = get_classnames('fashion_mnist'), ['a photo of a {}.']
    ref = build_classifier(model, tiny_tokenizer, names, templates)
    bf = build_classifier(model, tiny_tokenizer, names, templates, precision='bf16')
    assert bf.dtype == torch.float32 and not torch.equal(bf, ref)  # it did run in bfloat16
    assert F.cosine_similarity(bf, ref, dim=0).min() > 0.95
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), False)
    data = IDXDataset(FIXTURE, 'test', transform=preprocess)
    first = [data.targets.index(c) for c in range(10)]
    images = torch.stack([data[i][0] for i in first])
    with torch.no_grad():
        clf = model.encode_image(images, normalize=True).T
    loader = DataLoader(Subset(data, first), batch_size=5)
    assert evaluate(model, loader, clf, progress=False, precision='bf16')['top1'] >= 0.9
    with pytest.raises(ValueError, match="Unknown precision 'int8'"):
        evaluate(model, loader, clf, progress=False, precision='int8')
