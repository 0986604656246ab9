"""The teacher-feature cache (open_clip_spike.teacher_cache): keys, shards, stale/corrupt caches, CachedTeacher."""
import json

import open_clip
import open_clip_spike  # noqa: F401  (registers SpikeCLIP-DemoTeacher)
import pytest
import torch

from open_clip_spike.teacher_cache import CachedTeacher, StaleCacheError, TeacherFeatureCache, sample_keys, \
    weights_digest

FP = {'teacher': 'T', 'pretrained': 'x.safetensors', 'precision': 'fp32'}


def test_sample_keys_are_per_sample_and_exact():
    x = torch.randn(4, 3, 8, 8)
    keys = sample_keys(x)
    assert len(keys) == 4 and len(set(keys)) == 4 and all(len(k) == 16 for k in keys)
    assert sample_keys(x[[2, 0]]) == [keys[2], keys[0]]  # independent of batch and position
    y = x.clone()
    y[1, 0, 0, 0] += 1e-6
    assert sample_keys(y)[1] != keys[1] and sample_keys(y)[0] == keys[0]
    assert sample_keys(x.to(torch.bfloat16))[0] != keys[0]  # the dtype is part of the key
    tokens = torch.tensor([[5, 6, 0], [5, 6, 0], [5, 7, 0]])
    k = sample_keys(tokens)
    assert k[0] == k[1] != k[2]


def test_add_flush_reload_round_trip(tmp_path):
    cache = TeacherFeatureCache(str(tmp_path), FP)
    keys = sample_keys(torch.arange(6.).view(3, 2))
    feats = torch.randn(3, 5)
    cache.add('image', keys, feats)
    cache.add('image', keys[:1], torch.zeros(1, 5))  # a known key keeps its first features
    assert cache.count('image') == 3 and torch.equal(cache.get('image', keys[0]), feats[0])
    assert cache.flush() == 3 and cache.flush() == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ['image-r0-00000.safetensors', 'meta.json']
    other = TeacherFeatureCache(str(tmp_path), dict(FP), rank=1)  # another process/rank reads every shard
    assert other.count('image') == 3 and other.count('text') == 0
    for i, k in enumerate(keys):
        assert torch.equal(other.get('image', k), feats[i])
    other.add('text', keys[:2], torch.ones(2, 5))
    other.flush()
    assert 'text-r1-00000.safetensors' in {p.name for p in tmp_path.iterdir()}
    assert cache.refresh() == 1 and torch.equal(cache.get('text', keys[1]), torch.ones(5))
    assert json.loads((tmp_path / 'meta.json').read_text())['fingerprint'] == FP


def test_stale_corrupt_and_orphan_caches_are_refused(tmp_path):
    TeacherFeatureCache(str(tmp_path / 'a'), FP)
    with pytest.raises(StaleCacheError, match=r"made for another setting \(precision: cached 'fp32', now 'bf16'\)"):
        TeacherFeatureCache(str(tmp_path / 'a'), dict(FP, precision='bf16'))
    c = TeacherFeatureCache(str(tmp_path / 'b'), FP)
    c.add('image', sample_keys(torch.ones(1, 2)), torch.ones(1, 3))
    c.flush()
    shard = tmp_path / 'b' / 'image-r0-00000.safetensors'
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(StaleCacheError, match='corrupt.*delete'):
        TeacherFeatureCache(str(tmp_path / 'b'), FP)
    (tmp_path / 'b' / 'meta.json').unlink()
    with pytest.raises(StaleCacheError, match='no meta.json'):
        TeacherFeatureCache(str(tmp_path / 'b'), FP)
    with pytest.raises(ValueError, match='2 keys but features of shape'):
        TeacherFeatureCache(str(tmp_path / 'c'), FP).add('image', [b'0' * 16, b'1' * 16], torch.ones(3, 3))


@pytest.fixture(scope='module')
def teacher():
    torch.manual_seed(0)
    model = open_clip.create_model('SpikeCLIP-DemoTeacher', output_dict=True)
    return model.eval().requires_grad_(False)


def test_cached_teacher_matches_teacher_and_skips_known_samples(tmp_path, teacher):
    calls = []
    teacher.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    tok = open_clip.get_tokenizer('SpikeCLIP-DemoTeacher')
    images = torch.randn(6, 3, 32, 32)
    text = tok(['a shirt', 'a shoe', 'a shirt', 'a bag', 'a shoe', 'a shirt'])
    with torch.no_grad():
        ref = teacher(images, text)
        cached = CachedTeacher(teacher, TeacherFeatureCache(str(tmp_path), FP))
        calls.clear()
        out = cached(images[:4], text[:4])
    assert torch.allclose(out['image_features'], ref['image_features'][:4], atol=1e-6)
    assert torch.allclose(out['text_features'], ref['text_features'][:4], atol=1e-6)
    assert torch.equal(out['logit_scale'], ref['logit_scale'])
    # one constants call, then the 4 images and the 3 distinct captions, each once
    def n(kw, key):
        return 0 if kw.get(key) is None else kw[key].shape[0]

    shapes = [(n(kw, 'image'), n(kw, 'text')) for kw in calls]
    assert shapes == [(0, 0), (4, 0), (0, 3)]
    calls.clear()
    with torch.no_grad():
        out = cached(images.flip(0), text.flip(0))  # 2 new images, 0 new captions, another order
    assert [(n(kw, 'image'), n(kw, 'text')) for kw in calls] == [(2, 0)]
    assert torch.allclose(out['image_features'], ref['image_features'].flip(0), atol=1e-6)
    assert torch.allclose(out['text_features'], ref['text_features'].flip(0), atol=1e-6)
    assert cached.cache.stats()['misses'] == {'image': 6, 'text': 4}
    assert cached.cache.stats()['hits'] == {'image': 4, 'text': 6}
    image_only = CachedTeacher(teacher, cached.cache, text=False)
    with torch.no_grad():
        assert image_only(images, text)['text_features'] is None


def test_weights_digest_tracks_values(teacher):
    d = weights_digest(teacher)
    other = open_clip.create_model('SpikeCLIP-DemoTeacher')
    other.load_state_dict(teacher.state_dict())
    assert weights_digest(other) == d
    with torch.no_grad():
        other.logit_scale.add_(1e-3)
    assert weights_digest(other) != d


def _shard_with(path, keys, feats, digest_of=None):
    """Rewrite a shard with these contents; its digest is that of ``digest_of`` (default: the contents)."""
    from safetensors.torch import save_file
    from open_clip_spike.teacher_cache import _payload_digest
    k2, f2 = digest_of if digest_of is not None else (keys, feats)
    save_file({'keys': keys, 'features': feats}, str(path), metadata={'kind': 'image',
                                                                      'digest': _payload_digest(k2, f2)})


@pytest.mark.parametrize('tamper, message', [
    ('negate', 'does not match the digest'),        # changed values, old digest
    ('nan', '1 non-finite feature values'),          # NaN with a matching digest
    ('float64', 'expected torch.float32'),
    ('width', 'width 4, other shards have \\[3\\]'),
])
def test_shard_contents_are_validated(tmp_path, tamper, message):
    c = TeacherFeatureCache(str(tmp_path), FP)
    keys = sample_keys(torch.arange(4.).view(2, 2))
    c.add('image', keys[:1], torch.ones(1, 3))
    c.flush()
    c.add('image', keys[1:], torch.full((1, 3), 2.))
    c.flush()
    shard = tmp_path / 'image-r0-00001.safetensors'
    from safetensors.torch import load_file
    s = load_file(str(shard))
    k, f = s['keys'], s['features']
    if tamper == 'negate':
        _shard_with(shard, k, -f, digest_of=(k, f))
    elif tamper == 'nan':
        _shard_with(shard, k, torch.tensor([[float('nan'), 2., 2.]]))
    elif tamper == 'float64':
        _shard_with(shard, k, f.double())
    else:
        _shard_with(shard, k, torch.ones(1, 4))
    with pytest.raises(StaleCacheError, match=f'image-r0-00001.safetensors is corrupt .*{message}'):
        TeacherFeatureCache(str(tmp_path), FP)


def test_non_finite_teacher_features_are_refused(tmp_path):
    c = TeacherFeatureCache(str(tmp_path), FP)
    feats = torch.ones(3, 4)
    feats[1, 2] = float('inf')
    feats[2] = float('nan')
    with pytest.raises(ValueError, match=r'5 non-finite values \(in 2 of 3 samples\)'):
        c.add('image', sample_keys(torch.arange(6.).view(3, 2)), feats)
    assert c.count('image') == 0


def test_every_batch_is_on_disk_and_compact_merges(tmp_path, teacher):
    """CachedTeacher writes a shard per batch (a SIGKILL keeps them); compact() merges them at the epoch end."""
    cached = CachedTeacher(teacher, TeacherFeatureCache(str(tmp_path), FP), text=False)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        for i in range(3):
            cached(images[2 * i:2 * i + 2], None)
    assert sorted(p.name for p in tmp_path.glob('image-*')) == [f'image-r0-0000{i}.safetensors' for i in range(3)]
    reread = TeacherFeatureCache(str(tmp_path), FP)  # what a killed run leaves: every batch
    assert reread.count('image') == 6
    assert cached.cache.compact() == 3
    assert [p.name for p in tmp_path.glob('image-*')] == ['image-r0-00003.safetensors']
    again = TeacherFeatureCache(str(tmp_path), FP)
    for k, row in zip(sample_keys(images), teacher(image=images)['image_features'].detach()):
        assert torch.allclose(again.get('image', k), row, atol=1e-6)
