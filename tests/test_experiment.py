"""The experiment entry point runs end to end on the `tiny` preset."""
import json

from experiments import youtube_faces


def test_youtube_faces_tiny_end_to_end(tmp_path, capsys):
  youtube_faces.main(["--preset", "tiny", "--steps", "3", "--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  assert "step     0" in out and "done: 3 steps" in out
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 2 and all(r["total"] > 0 for r in rows)
