"""Is a face-unit lever real? The default experiment over training seeds, judged by a rule fixed
before looking.

    python -m benchmarks.face_seeds run --root DIR --seeds 0 1 2 3 4 --cores 0 1 \\
        --setting base= --setting "lam 0.3=--config.model.lam=0.3"
    python -m benchmarks.face_seeds run --root DIR --seeds 0 1 2 3 4 --cores 0 1 \\
        --setting "base shifted=@base --config.eval.choose_shifted=True"
    python -m benchmarks.face_seeds table --root DIR --baseline base [--min-gains 3] [--layer K]
    python -m benchmarks.face_seeds export --root DIR --out benchmarks/results/face_seeds_X.json \
        --note "machine, commit, what was written down before the runs"

One run of the face unit is a draw: a change of float32 rounding alone moved one by 0.1 AUC
(BENCHMARKS.md, "The frames' scale"), as much as any lever. So a setting is the experiment
(`python -m experiments.youtube_faces --config.train.seed=S OVERRIDES`) over several seeds,
each run in ROOT/NAME_sS (skipped when its metrics.json exists, so an interrupted study resumes),
one process per core. `table` compares every setting with the baseline seed by seed on the
face unit's leave-one-source-out AUC, as-is and shifted/scaled: a setting *qualifies* when its
mean rises both ways and it gains on at least `--min-gains` of the common seeds each way; of
those, the one with the larger sum of the two means is the one to adopt. `--layer K` judges
the best unit of layer K alone (the run's `per_layer`, chosen by the same procedure) instead.

A setting whose overrides start with `@SOURCE` trains nothing: it scores SOURCE's trained run of
each seed again with its own `--config.eval.*` (the experiment's `--score-into`), after every
training run of the invocation has finished. An evaluation lever is so judged on the very
networks its baseline was, free of training's seed-to-seed noise, at the cost of evaluations.

A study's run directories live on the machine that ran it; `export` keeps what the rule reads
(every detector's AUCs, every layer's, per run; no folds, no images: a few kB) in one JSON file
for the repository, and `table --root` reads such a file like a directory, so a recorded study
can be judged again, or serve as the baseline of a later one, on any machine. `table --root`
takes several (an export and a directory) and judges their runs together: a study carried on
in a later session on another machine.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys


def parse_setting(text: str) -> tuple[str, list[str]]:
  """"NAME=OVERRIDES" -> (NAME, [override, ...]); ValueError naming what a setting looks like.
  "NAME=@SOURCE --config.eval.K=V ...": SOURCE's trained runs scored again (`rescored_from`)."""
  name, sep, overrides = text.partition("=")
  name = name.strip()
  if not sep or not name or "/" in name or name.startswith("."):
    raise ValueError(f"setting {text!r} must be NAME=OVERRIDES (NAME without '/', OVERRIDES the "
                     f"experiment's flags, possibly none), e.g. 'lam 0.3=--config.model.lam=0.3'")
  out = shlex.split(overrides)
  source = rescored_from(out)
  if source is not None:
    bad = [o for o in out[1:] if not o.startswith("--config.eval.") or "=" not in o]
    if not source or source == name or bad:
      raise ValueError(f"setting {text!r}: a rescoring setting is NAME=@SOURCE followed by "
                       f"--config.eval.KEY=VALUE flags only (SOURCE another setting's name; the "
                       f"network is SOURCE's, only the evaluation may differ)"
                       + (f"; not {bad}" if bad else ""))
  return name, out


def rescored_from(overrides: list[str]) -> str | None:
  """The setting whose trained runs these overrides score again ("@SOURCE" first), else None."""
  return overrides[0][1:] if overrides and overrides[0].startswith("@") else None


def run_dir(root: str, name: str, seed: int) -> str:
  return os.path.join(root, f"{name}_s{seed}".replace(" ", "_"))


def command(name: str, overrides: list[str], seed: int, root: str, core: int | None,
            python: str = sys.executable) -> list[str]:
  """The experiment's command line for one run (pinned to `core` where taskset exists); for a
  rescoring setting, the scoring of its source's run of that seed into this setting's directory."""
  source = rescored_from(overrides)
  if source is None:
    cmd = [python, "-m", "experiments.youtube_faces", "--workdir", run_dir(root, name, seed),
           f"--config.train.seed={seed}", *overrides]
  else:
    cmd = [python, "-m", "experiments.youtube_faces", "--workdir", run_dir(root, source, seed),
           "--score-into", run_dir(root, name, seed), *overrides[1:]]
  if core is not None and shutil.which("taskset"):
    cmd = ["taskset", "-c", str(core), *cmd]
  return cmd


@contextlib.contextmanager
def _settings_of(root: str):
  """ROOT/settings.json as a dict to read and change, written back (atomically) only if the block
  ends without an error. Under an exclusive lock: one `run` per core, started together, is how a
  study is run, and an unlocked read-modify-write let one read the other's half-written file."""
  study = os.path.join(root, "settings.json")
  with open(os.path.join(root, "settings.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    known = {}
    if os.path.exists(study):
      with open(study) as f:
        known = json.load(f)
    yield known
    tmp = f"{study}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(known, f, indent=2)
    os.replace(tmp, study)


def run(root: str, settings: list[tuple[str, list[str]]], seeds: list[int],
        cores: list[int | None]) -> list[tuple[str, int, int]]:
  """Every (setting, seed) run not yet finished, seed-major (so a partial study has the same seeds
  for every setting), one per core at a time; the rescoring settings' runs after every training
  run, each once its source's run of that seed has finished (else it is left for a later call,
  with exit status None). Returns (name, seed, exit status) per run started or left."""
  os.makedirs(root, exist_ok=True)
  dirs = [os.path.basename(run_dir(root, n, 0)) for n, _ in settings]
  if len(set(dirs)) != len(dirs):
    raise ValueError(f"settings {[n for n, _ in settings]} share run directories (a space reads as "
                     f"'_'): give them distinct names")
  with _settings_of(root) as known:
    for name, overrides in settings:
      if known.get(name, overrides) != overrides:
        raise ValueError(f"setting {name!r} ran in {root} with {known[name]}, not {overrides}: "
                         f"give it another name or another --root")
      known[name] = overrides
    for name, overrides in settings:
      source = rescored_from(overrides)
      if source is not None and (source not in known or rescored_from(known[source]) is not None):
        raise ValueError(f"setting {name!r} scores {source!r}'s runs again, but {source!r} is not "
                         f"a training setting of {root} (settings: {sorted(known)}): give it too")

  def finished(name, seed):
    return os.path.exists(os.path.join(run_dir(root, name, seed), "metrics.json"))
  jobs = [(name, overrides, s) for s in seeds for name, overrides in settings
          if not finished(name, s)]
  free = list(cores)

  def one(job):
    name, overrides, seed = job
    source = rescored_from(overrides)
    if source is not None and not finished(source, seed):
      print(f"{name} seed {seed}: left, {source} seed {seed} has not finished", flush=True)
      return name, seed, None
    core = free.pop()
    try:
      with open(run_dir(root, name, seed) + ".log", "w") as log:
        rc = subprocess.call(command(name, overrides, seed, root, core), stdout=log,
                             stderr=subprocess.STDOUT)
      print(f"{name} seed {seed}: exit {rc}", flush=True)
      return name, seed, rc
    finally:
      free.append(core)
  out = []
  for rescoring in (False, True):  # every training run has ended before the first rescoring
    with concurrent.futures.ThreadPoolExecutor(len(cores)) as pool:
      out += pool.map(one, [j for j in jobs if (rescored_from(j[1]) is not None) == rescoring])
  return out


def _scalars(summary: dict) -> dict:
  """A detector's summary without its folds: the AUCs and the worst folds' names."""
  return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}


def _kept(generalisation: dict) -> dict:
  """What `export` keeps of a run's metrics.json "generalisation": the rule's inputs."""
  return {"detectors": {k: _scalars(v) for k, v in generalisation["detectors"].items()},
          "per_layer": [_scalars(v) for v in generalisation.get("per_layer", [])],
          "unit_layers": generalisation.get("unit_layers", [])}


def load_runs(root: str | list[str]) -> dict[str, dict[int, dict]]:
  """{setting: {seed: _kept(the run's generalisation)}} of every finished run under a study's
  directory, or of an `export`ed study (a .json file); of several, merged (a study carried on
  over sessions: its export so far and the directory of the seeds run since)."""
  if isinstance(root, (list, tuple)):
    out, where = {}, {}
    for r in root:
      for name, by_seed in load_runs(r).items():
        for seed, run in by_seed.items():
          if (name, seed) in where:
            raise ValueError(f"{name!r} seed {seed} is in both {where[name, seed]} and {r}: "
                             f"give each run once")
          where[name, seed] = r
          out.setdefault(name, {})[seed] = run
    return out
  if os.path.isfile(root):
    with open(root) as f:
      study = json.load(f)
    return {name: {int(s): run for s, run in by_seed.items()}
            for name, by_seed in study["runs"].items()}
  with open(os.path.join(root, "settings.json")) as f:
    names = list(json.load(f))
  out = {}
  for name in names:
    stem = os.path.basename(run_dir(root, name, 0))[:-1]  # "NAME_s"
    for entry in sorted(os.listdir(root)):
      seed, metrics = entry[len(stem):], os.path.join(root, entry, "metrics.json")
      if entry.startswith(stem) and seed.isdigit() and os.path.exists(metrics):
        with open(metrics) as f:
          out.setdefault(name, {})[int(seed)] = _kept(json.load(f)["generalisation"])
  return out


def load(root: str | list[str], layer: int | None = None) -> dict[str, dict[int, dict]]:
  """{setting: {seed: the run's leave-one-source-out detectors}} (`load_runs`); with `layer` (from
  1), "face_unit" is the best unit of that layer alone, chosen by the same procedure."""
  out = {}
  for name, by_seed in load_runs(root).items():
    for seed, run in by_seed.items():
      det = dict(run["detectors"])
      if layer is not None:
        if not 1 <= layer <= len(run["per_layer"]):
          raise ValueError(f"--layer {layer}: {name} seed {seed} has layers 1 to "
                           f"{len(run['per_layer'])}")
        det["face_unit"] = run["per_layer"][layer - 1]
      out.setdefault(name, {})[seed] = det
  return out


def export(root: str, out_path: str, note: str) -> dict:
  """Writes a study's settings and every finished run's `_kept` metrics to `out_path` (a .json
  file), atomically; returns what it wrote."""
  if not out_path.endswith(".json"):
    raise ValueError(f"--out {out_path!r}: the export is one .json file; name it NAME.json")
  with open(os.path.join(root, "settings.json")) as f:
    settings = json.load(f)
  runs = load_runs(root)
  if not runs:
    raise ValueError(f"no finished run under {root}: nothing to export")
  study = {"note": note, "settings": settings,
           "runs": {name: {str(s): run for s, run in sorted(by_seed.items())}
                    for name, by_seed in runs.items()}}
  tmp = out_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(study, f, indent=1, sort_keys=True)
  os.replace(tmp, out_path)
  return study


def _mean_and_se(values: list[float]) -> tuple[float, float]:
  """Mean and its standard error (sample std / sqrt(n); nan for one value)."""
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else float("nan")
  return mean, (var / n) ** 0.5


def judge(runs: dict[str, dict[int, dict]], baseline: str, min_gains: int) -> dict[str, dict]:
  """Per setting: the face unit's per-seed and mean (as-is, shifted) AUC; against the baseline, on
  the seeds both have: the seeds gaining each way, the mean paired difference with its standard
  error, and whether it qualifies by the rule (None while fewer than `min_gains` seeds are in)."""
  from lcnet import holdout  # what the verdict counts as unsupervised counts here too
  if baseline not in runs:
    raise ValueError(f"no finished run of the baseline {baseline!r}; settings: {sorted(runs)}")
  base = runs[baseline]
  out = {}
  for name, by_seed in runs.items():
    unit = {s: (d["face_unit"]["auc"], d["face_unit"]["shifted_auc"]) for s, d in by_seed.items()}
    mean = tuple(sum(v[i] for v in unit.values()) / len(unit) for i in (0, 1))
    margin = {s: tuple(unit[s][i] - max(d[k][key] for k in d
                                        if k != "face_unit" and k not in holdout.SUPERVISED)
                       for i, key in enumerate(("auc", "shifted_auc"))) for s, d in by_seed.items()}
    row = {"seeds": unit, "mean": mean, "margin_over_unsupervised": margin,
           "linear_filters_mean": tuple(
               sum(d["linear_filters"][k] for d in by_seed.values()) / len(by_seed)
               for k in ("auc", "shifted_auc"))}
    common = sorted(set(unit) & set(base))
    if name != baseline and common:
      b = {s: (base[s]["face_unit"]["auc"], base[s]["face_unit"]["shifted_auc"]) for s in common}
      gains = tuple(sum(unit[s][i] > b[s][i] for s in common) for i in (0, 1))
      rises = tuple(sum(unit[s][i] for s in common) > sum(b[s][i] for s in common) for i in (0, 1))
      row.update(common=common, gains=gains, difference=tuple(
                     _mean_and_se([unit[s][i] - b[s][i] for s in common]) for i in (0, 1)),
                 # None: too few seeds yet to judge
                 qualifies=(all(rises) and min(gains) >= min_gains
                            if len(common) >= min_gains else None))
    out[name] = row
  return out


def table(root: str | list[str], baseline: str, min_gains: int, layer: int | None = None,
          baseline_from: str | None = None) -> str:
  """The study as a Markdown table, judged by the rule. `baseline_from`: the baseline's runs come
  from that study (a directory or an export) instead of `root`."""
  runs = load(root, layer)
  if baseline_from is not None:
    other = load(baseline_from, layer)
    if baseline not in other:
      raise ValueError(f"no finished run of the baseline {baseline!r} in {baseline_from}; "
                       f"settings there: {sorted(other)}")
    runs = {baseline: other[baseline], **{n: r for n, r in runs.items() if n != baseline}}
  verdicts = judge(runs, baseline, min_gains)
  seeds = sorted({s for r in runs.values() for s in r})
  head = ["setting", *(f"seed {s}" for s in seeds), "mean", f"gains vs {baseline}",
          "paired difference (+- s.e.)", "linear filters (mean)", "qualifies"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, row in verdicts.items():
    cells = [f"{row['seeds'][s][0]:.3f} / {row['seeds'][s][1]:.3f}" if s in row["seeds"] else ""
             for s in seeds]
    gains = (f"{row['gains'][0]}/{len(row['common'])}, {row['gains'][1]}/{len(row['common'])}"
             if "gains" in row else "")
    diff = (" / ".join(f"{m:+.3f} +- {e:.3f}" for m, e in row["difference"])
            if "difference" in row else "")
    verdict = ({True: "yes", False: "no", None: "too few seeds"}[row["qualifies"]]
               if "qualifies" in row else "")
    lines.append("| " + " | ".join([name, *cells, "**{:.3f} / {:.3f}**".format(*row["mean"]),
                                    gains, diff,
                                    "{:.3f} / {:.3f}".format(*row["linear_filters_mean"]),
                                    verdict]) + " |")
  scope = (f"Each cell: the best unit of layer {layer} alone" if layer is not None
           else "Each cell: the face unit")
  name0 = next(iter(runs))
  seed0 = min(runs[name0])
  d = runs[name0][seed0]
  controls = "; ".join(f"{k} {d[k]['auc']:.3f} / {d[k]['shifted_auc']:.3f}"
                       for k in ("random_weights", "single_pixel", "gradient_energy",
                                 "logistic_regression"))
  best = max((n for n, r in verdicts.items() if r.get("qualifies")),
             key=lambda n: sum(verdicts[n]["mean"]), default=None)
  return "\n".join([
      *lines, "",
      f"{scope}'s LOSO AUC, as-is / shifted. Controls that do not depend on the "
      f"training data ({name0}, seed {seed0}): {controls}.",
      f"Rule: the mean rises as-is and shifted, and at least {min_gains} of the common seeds gain "
      f"each way; of the settings that qualify, the larger sum of the two means. To adopt: "
      f"{best or 'none'}."])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("run")
  r.add_argument("--root", required=True)
  r.add_argument("--setting", action="append", required=True, metavar="NAME=OVERRIDES")
  r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  r.add_argument("--cores", type=int, nargs="+", default=None,
                 help="one run at a time on each (default: every core this process may use)")
  t = sub.add_parser("table")
  t.add_argument("--root", required=True, nargs="+",
                 help="the study's directory or export; several: their runs together")
  t.add_argument("--baseline", required=True)
  t.add_argument("--min-gains", type=int, default=3)
  t.add_argument("--layer", type=int, default=None,
                 help="judge the best unit of this layer (from 1) alone")
  t.add_argument("--baseline-from", default=None, metavar="DIR_OR_JSON",
                 help="take the baseline's runs from this study (e.g. an export) instead")
  e = sub.add_parser("export")
  e.add_argument("--root", required=True)
  e.add_argument("--out", required=True)
  e.add_argument("--note", required=True,
                 help="the machine, the commit, and what was written down before the runs")
  a = ap.parse_args(argv)
  if a.cmd == "run":
    try:
      settings = [parse_setting(s) for s in a.setting]
    except ValueError as e:
      ap.error(str(e))
    cores = a.cores or sorted(os.sched_getaffinity(0))
    failed = [f"{n} seed {s} (exit {rc}; log {run_dir(a.root, n, s)}.log)"
              for n, s, rc in run(a.root, settings, a.seeds, cores) if rc]  # None: left
    if failed:
      raise SystemExit("failed: " + "; ".join(failed))
  elif a.cmd == "export":
    try:
      study = export(a.root, a.out, a.note)
    except ValueError as e:
      ap.error(str(e))
    print(f"{a.out}: {sum(map(len, study['runs'].values()))} runs of {len(study['runs'])} settings")
  else:
    try:
      print(table(a.root, a.baseline, a.min_gains, a.layer, a.baseline_from))
    except ValueError as e:
      ap.error(str(e))


if __name__ == "__main__":
  main()
