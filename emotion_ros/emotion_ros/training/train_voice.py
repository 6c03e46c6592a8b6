"""Train the CNN + BiLSTM speech-emotion model (``emotion-train voice``).

One or more corpora (``--data`` repeated: RAVDESS-named files or one folder per label), split by speaker
(never by file).  What it does for voices, rooms and microphones it never heard:

- **corpus balance**: each batch draws every corpus equally often, and within a corpus every label equally
  often, so the larger corpus or label does not set the prior;
- **partial labels**: a corpus that covers only some labels (TurEV-DB: angry, calm, happy, sad) is trained with
  a softmax over *its* labels only, so it never teaches that the others do not occur;
- **input that forgets the recording**: per-utterance loudness normalisation (as before) and per-utterance
  mean normalisation of each mel band (``FeatureSpec.utterance_cmn``); with ``--speaker-norm N`` the model
  sees each utterance's mean spectrum relative to a running mean over N utterances of its speaker instead
  (``FeatureSpec.speaker_window``, :class:`~emotion_ros.core.voice.features.SpeakerNormaliser`): in training the
  reference is drawn from 1 to N utterances of the same speaker (1: the utterance alone, as the node starts) in
  the same augmented copy, which records each speaker in one session (one room, microphone and SNR);
- **augmentation** (``--augment room``, precomputed copies): speed and pitch (``--speed-range``,
  ``--pitch-semitones``, ``--pitch-prob``), generated room impulse
  responses, telephone / laptop / far-field / tilted microphones, noise at 0-20 dB SNR, gain over +-20 dB with
  clipping; SpecAugment and within-corpus mixup during training;
- **speaker-adversarial training** (``--speaker-adversarial W``, off by default): a speaker classifier on the
  embedding, behind a gradient-reversal layer, learns which training speaker spoke; the reversed gradient
  (weight ramped from 0 to W over the first part of training) pushes the embedding to forget who is speaking.
  Training only: the classifier is not saved with the model, and the node runs the same network;
- **calibration**: a temperature fitted on the dev speakers (held out of training) by log-likelihood, stored in
  the checkpoint and applied by :class:`~emotion_ros.core.voice.model.VoiceModel`; the expected calibration error
  before and after is saved with it.

The last epoch of a fixed schedule is saved (no selection on held-out speakers); the test speakers are only
reported.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.errors import DataError
from ..core.labels import LABELS, NUM_LABELS
from ..core.modelio import save_checkpoint
from ..core.voice.features import FeatureSpec, SpeakerNormaliser, load_audio, trim_silence, utterance_features
from ..core.voice.segment import segment_offline
from ..core.voice.model import ARCH, SpeechCNNBiLSTM
from .augment import add_noise, augment_voice, spec_augment
from .calibration import calibrate_report, calibration_summary
from .common import Checkpointer, args_config, metrics_from_predictions, seed_everything, write_json
from .voice_data import VoiceItem, label_masks, load_corpora, parse_speakers, split_parts


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, action="append",
                   help="a corpus folder (RAVDESS-style names, or one folder per label); repeat for several")
    p.add_argument("--out", required=True)
    p.add_argument("--run-dir", default="runs/voice")
    p.add_argument("--test-speakers", default="17-20",
                   help="held out entirely, reported only (RAVDESS actor numbers/ranges, or speaker ids as in "
                        "file names, e.g. '17-20,1358,7895')")
    p.add_argument("--dev-speakers", default="15-16",
                   help="held out: calibration temperature, monitoring and fusion training")
    p.add_argument("--speaker-regex", default=None, help="speaker id from file names (non-RAVDESS data)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--augment", choices=("room", "basic", "none"), default="room",
                   help="room: rooms, microphones, noise 0-20 dB, gain +-20 dB, speed/pitch; basic: the "
                        "earlier speed/pitch/noise/gain set")
    p.add_argument("--augment-copies", type=int, default=4, help="augmented copies of each training utterance")
    p.add_argument("--pitch-prob", type=float, default=0.3, help="probability of a pitch shift per copy")
    p.add_argument("--pitch-semitones", type=float, default=2.0,
                   help="--augment room: pitch shifts drawn from +-this many semitones (tempo kept)")
    p.add_argument("--speed-range", default="0.9,1.1",
                   help="--augment room: speed factors (resampling: tempo and pitch together) drawn from LO,HI")
    p.add_argument("--mixup", type=float, default=0.2, help="mixup Beta(a, a) within a corpus; 0 disables")
    p.add_argument("--no-utterance-cmn", dest="utterance_cmn", action="store_false",
                   help="keep each utterance's mean log-mel spectrum (no per-utterance band normalisation)")
    p.add_argument("--speaker-norm", type=int, default=0, metavar="N",
                   help="> 0: normalise each utterance's mean spectrum by a running mean over up to N utterances "
                        "of its speaker (the node keeps that estimate per stream); 0: per utterance only")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="sample files uniformly instead of balancing corpora and labels")
    p.add_argument("--corpus-share", default="", metavar="A,B,...",
                   help="with balancing: relative share of the batches for each --data corpus, in order (e.g. '3,1': "
                        "three quarters from the first); default equal")
    p.add_argument("--no-partial-labels", dest="partial_labels", action="store_false",
                   help="softmax over all labels for every corpus")
    p.add_argument("--conv-channels", default="64,128,128")
    p.add_argument("--lstm-hidden", type=int, default=96)
    p.add_argument("--crop-frames", type=int, default=300)
    p.add_argument("--crop-min-frames", type=int, default=0,
                   help="> 0: each batch is cropped to a random length between this and --crop-frames (the node "
                        "classifies utterances from 0.3 s and windows of 3 s)")
    p.add_argument("--cut", choices=("node", "trim"), default="node",
                   help="node: each recording (and each augmented copy of it) goes through the voice node's own "
                        "segmenter and trimming, so that training sees the extents the node classifies; trim: "
                        "the whole file with its leading and trailing silence trimmed (before 2026-12-01)")
    p.add_argument("--speaker-adversarial", type=float, default=0.0, metavar="W",
                   help="weight of a speaker classifier trained through gradient reversal on the embedding, so "
                        "that the embedding forgets who is speaking (0: off)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache-dir", default=None,
                   help="keep computed features here (default: RUN_DIR/cache); reused when inputs match")
    p.add_argument("--resume", action="store_true")


def _augment_basic(w: np.ndarray, sr: int, rng: np.random.Generator, pitch_prob: float) -> np.ndarray:
    import soxr
    out = w
    if rng.random() < 0.8:                       # speed perturbation (tempo + pitch)
        out = soxr.resample(out, sr, int(sr / rng.uniform(0.88, 1.12))).astype(np.float32)
    if rng.random() < pitch_prob:                # pitch only
        import librosa
        out = librosa.effects.pitch_shift(out, sr=sr, n_steps=float(rng.uniform(-2.5, 2.5))).astype(np.float32)
    if rng.random() < 0.6:
        out = add_noise(out, rng)
    out = out * (10 ** (rng.uniform(-12, 6) / 20))   # gain (before loudness normalisation)
    return np.clip(out, -1, 1).astype(np.float32)


def _batchify(feats: List[np.ndarray], crop: int, rng, train: bool):
    lens = [min(len(f), crop) if crop else len(f) for f in feats]
    t = max(lens)
    x = np.zeros((len(feats), t, feats[0].shape[1]), np.float32)
    for i, f in enumerate(feats):
        if crop and len(f) > crop:
            s = rng.integers(0, len(f) - crop + 1) if train else (len(f) - crop) // 2
            f = f[s:s + crop]
        x[i, :len(f)] = f
    return torch.from_numpy(x), torch.tensor(lens)


def predict_logits(net, feats: List[np.ndarray], batch: int = 32) -> np.ndarray:
    net.eval()
    out = np.zeros((len(feats), NUM_LABELS), np.float32)
    order = np.argsort([len(f) for f in feats])
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x, lens = _batchify([feats[j] for j in idx], 0, None, False)
            out[idx] = net(x, lens).float().numpy()
    return out


def predict_feats(net, feats: List[np.ndarray], batch: int = 32) -> np.ndarray:
    """Softmax probabilities (uncalibrated) of a list of normalised feature sequences."""
    return torch.softmax(torch.from_numpy(predict_logits(net, feats, batch)), 1).numpy()


# ---------------------------------------------------------------- data

def node_cut(wave: np.ndarray) -> np.ndarray:
    """What the voice node classifies of a recording: its segmenter's longest utterance, trimmed as the node trims
    it (the whole recording trimmed when the segmenter finds none, as ``classify_wave`` does)."""
    segs = segment_offline(wave)
    if not segs:
        return trim_silence(wave)
    return trim_silence(max(segs, key=lambda s: s.samples.size).samples)


def _load_waves(items: List[VoiceItem], what: str, cut: str = "trim"
                ) -> Tuple[List[np.ndarray], List[VoiceItem], List[str]]:
    """Readable recordings: trimmed (``cut='trim'``) or whole (``'node'``: cut per copy by :func:`node_cut`)."""
    waves, kept, bad = [], [], []
    for it in tqdm(items, desc=f"load {what}", mininterval=10, file=sys.stdout):
        try:
            w = load_audio(it.path)
            w = trim_silence(w) if cut == "trim" else w
        except ValueError as exc:              # InputError: unreadable, empty, all NaN
            bad.append(f"{it.path}: {exc}")
            continue
        if w.size < 1600:
            bad.append(f"{it.path}: shorter than 0.1 s")
            continue
        waves.append(w)
        kept.append(it)
    return waves, kept, bad


def _speed_range(args) -> Tuple[float, float]:
    """--speed-range LO,HI -> (LO, HI); DataError (one line) unless 0 < LO <= HI."""
    return factor_range(args.speed_range, "--speed-range")


def factor_range(text, option: str) -> Tuple[float, float]:
    """An option's LO,HI -> (LO, HI); DataError (one line) unless 0 < LO <= HI."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise DataError(f"{option}: expected LO,HI (e.g. 0.9,1.1), got {text!r}") from None
    if not 0 < lo <= hi:
        raise DataError(f"{option}: expected 0 < LO <= HI, got {text!r}")
    return lo, hi


def _cache_key(args, items: List[VoiceItem], spec: FeatureSpec) -> str:
    h = hashlib.sha256()
    fspec = {k: v for k, v in spec.to_dict().items() if k != "speaker_window"}   # applied after the cache
    speed = _speed_range(args)
    h.update(json.dumps({"spec": fspec, "augment": args.augment, "copies": args.augment_copies,
                         "pitch": args.pitch_prob, "seed": args.seed, "v": 2,
                         **({"semitones": args.pitch_semitones} if args.pitch_semitones != 2.0 else {}),
                         **({"speed": list(speed)} if speed != (0.9, 1.1) else {}),
                         **({"cut": args.cut} if args.cut != "trim" else {}),   # trim: the keys of before --cut
                         **({"sessions": 1} if spec.speaker_window else {})},
                        sort_keys=True).encode())
    for it in items:
        st = os.stat(it.path)
        h.update(f"{it.path}|{st.st_size}|{int(st.st_mtime)}|{it.label}\n".encode())
    return h.hexdigest()[:16]


def _features(args, spec: FeatureSpec, waves, items, rng, augment: bool, what: str
              ) -> Tuple[List[List[np.ndarray]], Optional[np.ndarray]]:
    """[copy][item] log-mel features (copy 0 clean), cached in the run's cache folder, and for speaker-normalised
    models the (copies, items, n_mels) band means of each copy (None otherwise).

    Speaker-normalised models are trained on **sessions**: every augmented copy records all utterances of a
    speaker with the same settings (speed, pitch, room, microphone, SNR; each its own noise), so that the
    reference drawn from that copy carries the channel of the utterance it normalises, as in the node."""
    cache_dir = args.cache_dir or os.path.join(args.run_dir, "cache")
    path = os.path.join(cache_dir, f"{what}-{_cache_key(args, items, spec)}.pkl")
    sessions = bool(spec.speaker_window)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            out = pickle.load(f)
        print(f"features for {what} from {path}", flush=True)
        bm = None
        if sessions:
            out, bm = out["copies"], np.asarray(out["band_means"], np.float32)
        return [[a.astype(np.float32) for a in copy] for copy in out], bm
    cut = node_cut if args.cut == "node" else (lambda w: w)   # trim: _load_waves trimmed them
    pairs = [[utterance_features(cut(w), spec, return_band_mean=True) for w in tqdm(waves, desc=f"features {what}", mininterval=15,
                                                                  file=sys.stdout)]]
    n_aug = args.augment_copies if (augment and args.augment != "none") else 0
    spk_index = {s: k for k, s in enumerate(sorted({it.speaker for it in items}))}
    ranges = {"pitch_semitones": args.pitch_semitones, "speed": _speed_range(args)}
    for k in range(n_aug):
        feats = []
        for w, it in tqdm(list(zip(waves, items)), desc=f"augment {what} {k + 1}/{n_aug}", mininterval=15,
                          file=sys.stdout):
            if args.augment == "room" and sessions:
                session = np.random.default_rng([args.seed, k, spk_index[it.speaker]])
                aw = augment_voice(w, spec.sample_rate, session, p_pitch=args.pitch_prob, sample_rng=rng, **ranges)
            elif args.augment == "room":
                aw = augment_voice(w, spec.sample_rate, rng, p_pitch=args.pitch_prob, **ranges)
            else:
                aw = _augment_basic(w, spec.sample_rate, rng, args.pitch_prob)
            feats.append(utterance_features(cut(aw), spec, return_band_mean=True))
        pairs.append(feats)
    copies = [[f for f, _ in copy] for copy in pairs]
    bm = np.stack([np.stack([b for _, b in copy]) for copy in pairs]).astype(np.float32)
    os.makedirs(cache_dir, exist_ok=True)
    store = [[a.astype(np.float16) for a in copy] for copy in copies]
    with open(path + ".tmp", "wb") as f:
        pickle.dump({"copies": store, "band_means": bm} if sessions else store, f, protocol=4)
    os.replace(path + ".tmp", path)
    return copies, (bm if sessions else None)


def sequential_offsets(band_means: np.ndarray, speakers: List[str], window: int, seed: int) -> np.ndarray:
    """What the node's :class:`SpeakerNormaliser` gives each utterance when every speaker's utterances arrive in
    a random (seeded) order, one speaker after another: (N, n_mels) band means minus the running reference."""
    order = np.random.default_rng(seed).permutation(len(speakers))
    norms: Dict[str, SpeakerNormaliser] = {}
    out = np.zeros_like(band_means)
    for i in order:
        out[i] = norms.setdefault(speakers[i], SpeakerNormaliser(window)).offset(band_means[i])
    return out


def speaker_groups(keys: Sequence[str]) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Each utterance's speaker key -> (its speaker's index (N,), per speaker the indices of its utterances), the
    speakers in sorted order: ``random_offsets``' ``group_of`` and ``groups``."""
    names = sorted(set(keys))
    index = {k: g for g, k in enumerate(names)}
    group_of = np.array([index[k] for k in keys], dtype=np.int64)
    return group_of, [np.flatnonzero(group_of == g) for g in range(len(names))]


def random_offsets(band_means: np.ndarray, groups: List[np.ndarray], group_of: np.ndarray, items: np.ndarray,
                   window: int, rng: np.random.Generator, copies: Optional[np.ndarray] = None,
                   min_count: int = 1) -> np.ndarray:
    """Training offsets: for each of ``items``, its band means minus the mean over itself and min_count-1 ..
    window-1 other utterances of its speaker, the count drawn uniformly (a reference as the node has it at start-up
    and after; ``min_count`` 2 for a member that abstains on a one-utterance reference). ``band_means`` (N, D), or
    (C, N, D) with ``copies`` (one per item): the reference comes from the item's own copy (its recording
    session)."""
    out = np.zeros((len(items), band_means.shape[-1]), np.float32)
    for b, i in enumerate(items):
        k = int(rng.integers(min(min_count, window), window + 1))
        if k > 1:
            bm = band_means if copies is None else band_means[copies[b]]
            g = groups[group_of[i]]
            others = g[g != i]
            pick = rng.choice(others, size=min(k - 1, others.size), replace=False) if others.size else others
            out[b] = bm[i] - bm[np.concatenate([[i], pick])].mean(0)
    return out


class _GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times -scale backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def adversary_weight(weight: float, progress: float) -> float:
    """DANN's ramp: 0 at the start of training, ``weight`` x (2 / (1 + exp(-10 p)) - 1) at progress p in [0, 1]."""
    return float(weight * (2.0 / (1.0 + np.exp(-10.0 * progress)) - 1.0))


def _corpus_shares(text: str, n_corpora: int) -> Optional[List[float]]:
    """``--corpus-share``: one positive number per corpus, or None (equal shares) when empty."""
    if not str(text).strip():
        return None
    try:
        shares = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise DataError(f"--corpus-share must be numbers separated by commas, got {text!r}") from None
    if len(shares) != n_corpora or not all(np.isfinite(v) and v > 0 for v in shares):
        raise DataError(f"--corpus-share needs {n_corpora} positive number(s), one per --data corpus, got {text!r}")
    return shares


def _sample_weights(corpus_of: np.ndarray, y: np.ndarray, balance: bool,
                    shares: Optional[Sequence[float]] = None) -> np.ndarray:
    """Sampling weight of each training sequence: with ``balance`` every corpus gets its share of the draws (equal,
    or ``shares[corpus index]`` relative to the others present) and, within a corpus, every label an equal part."""
    if not balance:
        return np.full(len(y), 1.0 / len(y))
    w = np.zeros(len(y))
    corpora = np.unique(corpus_of)
    share = {int(c): (float(shares[int(c)]) if shares is not None else 1.0) for c in corpora}
    total = sum(share.values())
    for c in corpora:
        in_c = corpus_of == c
        labels = np.unique(y[in_c])
        for lab in labels:
            m = in_c & (y == lab)
            w[m] = share[int(c)] / (total * len(labels) * m.sum())
    return w / w.sum()


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.speaker_norm < 0:
        raise DataError(f"--speaker-norm must be >= 0, got {args.speaker_norm}")
    _speed_range(args)                                # a bad range fails before any work
    if args.pitch_semitones < 0:
        raise DataError(f"--pitch-semitones must be >= 0, got {args.pitch_semitones}")
    if args.speaker_adversarial < 0:
        raise DataError(f"--speaker-adversarial must be >= 0, got {args.speaker_adversarial}")
    if args.speaker_norm and not args.utterance_cmn:
        raise DataError("--speaker-norm needs the per-utterance band normalisation (drop --no-utterance-cmn)")
    spec = FeatureSpec(utterance_cmn=bool(args.utterance_cmn), speaker_window=int(args.speaker_norm))
    corpora = load_corpora(args.data, args.speaker_regex)
    shares = _corpus_shares(args.corpus_share, len(corpora))
    test_spk, dev_spk = parse_speakers(args.test_speakers), parse_speakers(args.dev_speakers)
    all_speakers = {i.speaker for c in corpora for i in c.items}
    for name, spk in (("--test-speakers", test_spk), ("--dev-speakers", dev_spk)):
        missing = [s for s in spk if s not in all_speakers]
        if missing:
            print(f"note: {name}: no files of speaker(s) {', '.join(missing)} in the data", file=sys.stderr)
    parts = split_parts(corpora, test_spk, dev_spk)
    for c in corpora:
        for name, n in c.skipped_classes.items():
            print(f"corpus {c.name}: skipping {name!r} ({n} files): not a label of the model", file=sys.stderr)
    if not parts["train"]:
        raise DataError("no training files left after holding out the dev and test speakers")
    train_labels = {it.label for it, _ in parts["train"]}
    if len(train_labels) < 2:
        raise DataError("the training speakers' files hold one label only: a classifier needs at least two")
    for c in corpora:
        print(f"corpus {c.name}: {len(c.items)} files, {len({i.speaker for i in c.items})} speakers, labels "
              f"{[LABELS[i] for i in c.labels]}", flush=True)
    print(f"train {len(parts['train'])} files, dev {len(parts['dev'])}, test {len(parts['test'])}", flush=True)

    t0 = time.time()
    loaded, unreadable = {}, []
    for part in ("train", "dev", "test"):
        items = [it for it, _ in parts[part]]
        waves, kept, bad = _load_waves(items, part, args.cut)
        unreadable += bad
        ci_of = {id(it): ci for it, ci in parts[part]}
        loaded[part] = (waves, kept, np.array([ci_of[id(it)] for it in kept], np.int64))
    for line in unreadable[:20]:
        print(f"skipped unreadable file {line}", file=sys.stderr)
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable file(s)", file=sys.stderr)
    if not loaded["train"][1]:
        raise DataError("none of the training files could be read")

    w_train, it_train, c_train = loaded["train"]
    y_train = np.array([i.label for i in it_train], np.int64)
    copies, bm_train = _features(args, spec, w_train, it_train, rng, True, "train")
    clean = copies[0]
    cat = np.concatenate(clean)
    mean = cat.mean(0).astype(np.float32)
    std = (cat.std(0) + 1e-3).astype(np.float32)

    def norm(fs):
        return [((f - mean) / std).astype(np.float32) for f in fs]

    X = [x for copy in copies for x in norm(copy)]
    Y = np.tile(y_train, len(copies))
    C = np.tile(c_train, len(copies))
    weights = _sample_weights(C, Y, args.balance, shares)
    masks = label_masks(corpora)
    if not args.partial_labels:
        masks[:] = True
    masks_t = torch.from_numpy(masks)

    n_train = len(it_train)
    spk_names = sorted({i.speaker for i in it_train})
    group_of, groups = speaker_groups([i.speaker for i in it_train])    # each training utterance's speaker

    evalsets = {}
    for part in ("dev", "test"):
        waves, items, cis = loaded[part]
        if items:
            copies_p, bm_p = _features(args, spec, waves, items, rng, False, part)
            feats = copies_p[0]
            if spec.speaker_window:
                off = sequential_offsets(bm_p[0], [i.speaker for i in items], spec.speaker_window, args.seed)
                feats = [f + o for f, o in zip(feats, off)]
            evalsets[part] = (norm(feats), np.array([i.label for i in items], np.int64), cis)
    print(f"features ready in {time.time() - t0:.0f}s: {len(X)} training sequences", flush=True)

    conv = [int(c) for c in str(args.conv_channels).split(",")]
    model_cfg = {"conv_channels": conv, "lstm_hidden": args.lstm_hidden, "embed_dim": 128}
    net = SpeechCNNBiLSTM(n_mels=spec.n_mels, conv_channels=tuple(conv), lstm_hidden=args.lstm_hidden,
                          embed_dim=model_cfg["embed_dim"])
    steps = max(1, len(X) // args.batch_size)
    trained: torch.nn.Module = net
    if args.speaker_adversarial:
        S = np.tile(group_of, len(copies))
        adversary = torch.nn.Sequential(torch.nn.Linear(model_cfg["embed_dim"], 128), torch.nn.ReLU(inplace=True),
                                        torch.nn.Linear(128, len(spk_names)))
        trained = torch.nn.ModuleDict({"net": net, "adversary": adversary})   # saved and resumed together
    opt = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps,
                                                pct_start=0.15)
    config = {"args": args_config(args), "model": model_cfg, "features": spec.to_dict(), "labels": list(LABELS),
              "corpora": [{"name": c.name, "files": len(c.items), "labels": [LABELS[i] for i in c.labels],
                           "speakers": sorted({i.speaker for i in c.items})} for c in corpora],
              "train_speakers": spk_names, "dev_speakers": dev_spk,
              "test_speakers": test_spk, "n_train": len(it_train), "n_train_augmented": len(X),
              "unreadable": len(unreadable)}
    ckpt = Checkpointer(args.run_dir)
    write_json(os.path.join(args.run_dir, "config.json"), config)
    start, history = 0, []
    if args.resume and (state := ckpt.load()):
        trained.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state["history"]
        print(f"resumed at epoch {start}", flush=True)
    for epoch in range(start, args.epochs):
        net.train()
        erng = np.random.default_rng(args.seed * 1000 + epoch)
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        draw = erng.choice(len(X), size=steps * args.batch_size, replace=True, p=weights)
        tot, adv_tot, correct, seen = 0.0, 0.0, 0, 0
        for b in tqdm(range(steps), desc=f"voice {epoch + 1}/{args.epochs}", mininterval=30, file=sys.stdout):
            idx = draw[b * args.batch_size:(b + 1) * args.batch_size]
            crop = args.crop_frames
            if args.crop_min_frames and crop:
                crop = int(erng.integers(min(args.crop_min_frames, crop), crop + 1))
            x, lens = _batchify([X[i] for i in idx], crop, erng, True)
            if spec.speaker_window:
                off = random_offsets(bm_train, groups, group_of, idx % n_train, spec.speaker_window, erng,
                                     copies=idx // n_train) / std
                valid = (torch.arange(x.shape[1]).unsqueeze(0) < lens.unsqueeze(1)).unsqueeze(-1)
                x = x + valid * torch.from_numpy(off).unsqueeze(1)
            x = spec_augment(x, g)
            y = torch.from_numpy(Y[idx])
            ci = torch.from_numpy(C[idx])
            target = F.one_hot(y, NUM_LABELS).float()
            mask = masks_t[ci]
            if args.label_smoothing:
                k = mask.sum(1, keepdim=True).float()
                target = target * (1 - args.label_smoothing) + mask.float() * args.label_smoothing / k
            if args.mixup > 0:
                perm = torch.from_numpy(erng.permutation(len(idx)))
                lam = torch.from_numpy(erng.beta(args.mixup, args.mixup, len(idx)).astype(np.float32))
                lam = torch.maximum(lam, 1 - lam)
                lam = torch.where(ci == ci[perm], lam, torch.ones_like(lam))    # mix within a corpus only
                lens = torch.maximum(lens, lens[perm])
                x = lam.view(-1, 1, 1) * x + (1 - lam.view(-1, 1, 1)) * x[perm]
                target = lam.view(-1, 1) * target + (1 - lam.view(-1, 1)) * target[perm]
            logits, emb = net(x, lens, return_embedding=True)
            logp = torch.log_softmax(logits.masked_fill(~mask, -1e4), 1)
            loss = cls_loss = -(target * logp.masked_fill(~mask, 0)).sum(1).mean()
            if args.speaker_adversarial:
                who = F.one_hot(torch.from_numpy(S[idx]), len(spk_names)).float()
                if args.mixup > 0:
                    who = lam.view(-1, 1) * who + (1 - lam.view(-1, 1)) * who[perm]
                scale = adversary_weight(args.speaker_adversarial, (epoch * steps + b) / (args.epochs * steps))
                spk_logits = adversary(_GradReverse.apply(emb, scale))
                adv_loss = -(who * torch.log_softmax(spk_logits, 1)).sum(1).mean()
                loss = loss + adv_loss             # the reversal scales only what reaches the embedding
                adv_tot += float(adv_loss.detach()) * len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained.parameters(), 5.0)
            opt.step()
            sched.step()
            tot += float(cls_loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        rec = {"epoch": epoch + 1, "train_loss": round(tot / seen, 4), "train_acc": round(correct / seen, 4)}
        if args.speaker_adversarial:
            rec["speaker_loss"] = round(adv_tot / seen, 4)         # ln(speakers) = chance
        if "dev" in evalsets:
            xd, yd, _ = evalsets["dev"]
            rec["dev_acc"] = metrics_from_predictions(yd, predict_feats(net, xd).argmax(1))["accuracy"]
        history.append(rec)
        print(json.dumps(rec), flush=True)
        ckpt.save(epoch + 1, trained, opt, sched, history)

    calibration = {"method": "none", "temperature": 1.0, "fitted_on": None}
    if "dev" in evalsets:
        xd, yd, _ = evalsets["dev"]
        calibration = calibrate_report(predict_logits(net, xd), yd,
                                       fitted_on=f"dev speakers {', '.join(dev_spk)} (held out of training)")
    temp = calibration["temperature"]
    metrics = {}
    for name, (xs, ys, cis) in evalsets.items():
        lg = predict_logits(net, xs)
        m = metrics_from_predictions(ys, lg.argmax(1))
        metrics[name] = {k: m[k] for k in ("accuracy", "macro_f1", "n", "per_class_recall", "prediction_share",
                                           "collapse_ratio") if k in m}
        metrics[name]["calibration"] = calibration_summary(lg, ys, temp)
        for ci, c in enumerate(corpora):
            sel = cis == ci
            if sel.any() and len(corpora) > 1:
                metrics[name][c.name] = metrics_from_predictions(ys[sel], lg[sel].argmax(1))["accuracy"]
    input_spec = {"features": spec.to_dict(), "mean": mean.tolist(), "std": std.tolist(), "min_seconds": 0.3,
                  "trim_top_db": 35.0}
    save_checkpoint(args.out, kind="voice", arch=ARCH, model=net, input_spec=input_spec, config=config,
                    metrics=metrics, extra={"history": history, "calibration": calibration})
    write_json(os.path.join(args.run_dir, "metrics.json"), {"metrics": metrics, "calibration": calibration})
    print(json.dumps({"out": args.out, "calibration": calibration, **metrics}), flush=True)
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
