"""Voice data loaders: RAVDESS-style file names, or one folder per class; any rate, mono or stereo."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.labels import INDEX, NUM_LABELS, RAVDESS_CODES, normalise

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3")
RAVDESS_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
DEFAULT_SPEAKER_RE = r"^([A-Za-z0-9]+)[_\-]"


@dataclass
class VoiceItem:
    path: str
    label: int
    speaker: str


@dataclass
class VoiceList:
    items: List[VoiceItem] = field(default_factory=list)
    skipped_classes: Dict[str, int] = field(default_factory=dict)


def parse_ravdess(path: str) -> Optional[Tuple[str, str]]:
    """RAVDESS name -> (label, 'Actor_NN'), or None if not such a name."""
    m = RAVDESS_RE.match(os.path.splitext(os.path.basename(path))[0])
    if not m:
        return None
    label = RAVDESS_CODES.get(m.group(3))
    return (label, f"Actor_{m.group(7)}") if label else None


def speaker_of(path: str, speaker_re: str = DEFAULT_SPEAKER_RE) -> str:
    rav = parse_ravdess(path)
    if rav:
        return rav[1]
    m = re.match(speaker_re, os.path.basename(path))
    return m.group(1) if m else os.path.basename(os.path.dirname(path))


def list_voice_data(root: str, speaker_re: str = DEFAULT_SPEAKER_RE) -> VoiceList:
    """Class folders (``root/<label>/*``) when the top-level folders name labels; otherwise every
    RAVDESS-named file found below ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    out = VoiceList()
    subdirs = [d for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))]
    class_dirs = {d: normalise(d) for d in subdirs}
    if any(v is not None for v in class_dirs.values()):
        for d, label in class_dirs.items():
            files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(root, d), followlinks=True) for f in fs
                           if f.lower().endswith(AUDIO_EXTS))
            if label is None:
                out.skipped_classes[d] = len(files)
                continue
            out.items += [VoiceItem(p, INDEX[label], speaker_of(p, speaker_re)) for p in files]
        return out
    for dp, _, fs in sorted(os.walk(root, followlinks=True)):
        for f in sorted(fs):
            if not f.lower().endswith(AUDIO_EXTS):
                continue
            p = os.path.join(dp, f)
            rav = parse_ravdess(p)
            if rav:
                out.items.append(VoiceItem(p, INDEX[rav[0]], rav[1]))
            else:
                out.skipped_classes["(unlabelled file names)"] = out.skipped_classes.get(
                    "(unlabelled file names)", 0) + 1
    return out


def split_by_speaker(items: List[VoiceItem], test_speakers: List[str]) -> Tuple[List[VoiceItem], List[VoiceItem]]:
    test = set(test_speakers)
    return [i for i in items if i.speaker not in test], [i for i in items if i.speaker in test]


def parse_speakers(spec: str) -> List[str]:
    """'17-20' or '17,18' or 'Actor_17' -> speaker names: one- and two-digit numbers and ranges of them are
    RAVDESS actors ('Actor_NN'); anything else is a speaker id as taken from file names (TurEV-DB's '1358')."""
    out: List[str] = []
    for part in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        m = re.fullmatch(r"(\d{1,2})-(\d{1,2})", part)
        if m:
            out += [f"Actor_{i:02d}" for i in range(int(m.group(1)), int(m.group(2)) + 1)]
        elif part.isdigit() and len(part) <= 2:
            out.append(f"Actor_{int(part):02d}")
        else:
            out.append(part)
    return out


@dataclass
class Corpus:
    """One training corpus: its name (the folder's), items and the labels it covers (a corpus that covers only
    some labels teaches only among those: see train_voice's masked loss)."""

    name: str
    items: List[VoiceItem]
    labels: List[int]
    skipped_classes: Dict[str, int] = field(default_factory=dict)


def load_corpora(roots: List[str], speaker_re: Optional[str] = None) -> List[Corpus]:
    """Each folder a corpus; FileNotFoundError for a missing folder (from :func:`list_voice_data`), DataError (one
    line) for an empty one, one with no recognisable labels, or data of one label only."""
    from ..core.errors import DataError

    out: List[Corpus] = []
    names = set()
    for root in roots:
        kw = {"speaker_re": speaker_re} if speaker_re else {}
        vl = list_voice_data(root, **kw)
        if not vl.items:
            subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
            what = ", ".join(f"{k} ({v} files)" for k, v in vl.skipped_classes.items()) or "no audio files"
            if subdirs:
                what += "; folders " + ", ".join(repr(d) for d in subdirs[:8]) + (" ..." if len(subdirs) > 8 else "")
            raise DataError(f"no labelled audio under {root}: {what}; expected one folder per label "
                            f"(neutral, happy, sad, angry, surprised, disgusted, scared or an alias) or "
                            f"RAVDESS-named files")
        name = os.path.basename(os.path.normpath(root)) or root
        while name in names:
            name += "_"
        names.add(name)
        out.append(Corpus(name, vl.items, sorted({i.label for i in vl.items}), vl.skipped_classes))
    if len({lab for c in out for lab in c.labels}) < 2:
        raise DataError(f"the data holds one label only ({', '.join(roots)}): a classifier needs at least two")
    return out


def split_parts(corpora: List["Corpus"], test_speakers: Sequence[str], dev_speakers: Sequence[str]
                ) -> Dict[str, List[Tuple[VoiceItem, int]]]:
    """Every file of ``corpora`` with its corpus index, under the part its speaker belongs to: ``test`` (a test
    speaker), ``dev`` (a dev speaker) or ``train``; split by speaker, never by file."""
    test, dev = set(test_speakers), set(dev_speakers)
    parts: Dict[str, List[Tuple[VoiceItem, int]]] = {"train": [], "dev": [], "test": []}
    for ci, c in enumerate(corpora):
        for it in c.items:
            parts["test" if it.speaker in test else "dev" if it.speaker in dev else "train"].append((it, ci))
    return parts


def label_masks(corpora: List["Corpus"]) -> np.ndarray:
    """(corpora, NUM_LABELS) bool: the labels each corpus covers (its softmax is taken over those only)."""
    masks = np.zeros((len(corpora), NUM_LABELS), bool)
    for ci, c in enumerate(corpora):
        masks[ci, c.labels] = True
    return masks
