"""lcnet on a real Slurm cluster (`make test-slurm`: a one-node cluster on 127.0.0.1 from Debian's
slurm-wlm and munge, `experiments/slurm/local_cluster.sh`): `sbatch` of the experiment's batch
script runs 2 tasks, each a jax process with 4 simulated CPU devices that finds its peers through
`lcnet.distributed.initialize()` and Slurm's variables, and trains like one process."""
import os
import shutil
import subprocess
import sys

import pytest
from test_experiment import assert_trained_alike

from experiments import youtube_faces

pytestmark = pytest.mark.slurm
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  d = tmp_path_factory.mktemp("slurm")
  script = os.path.join(ROOT, "experiments", "slurm", "local_cluster.sh")
  subprocess.run([script, "start", str(d)], check=True, timeout=120)
  env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
  yield env
  subprocess.run([script, "stop", str(d)], check=False, timeout=60)


def test_sbatch_trains_on_two_processes_like_one(tmp_path, cluster):
  sgd = ["--config.train.optimizer=sgd", "--config.train.learning_rate=1e-4"]
  one, two = tmp_path / "one", tmp_path / "two"
  youtube_faces.main(["--preset", "tiny", "--workdir", str(one), "--config.eval.enabled=False", *sgd])
  out = tmp_path / "slurm-%j.out"
  cmd = [shutil.which("sbatch"), "--wait", "--nodes=1", "--ntasks=2", "--chdir", ROOT,
         f"--output={out}", f"--export=ALL,LCNET_LOCAL_DEVICES=4,XLA_FLAGS=,LCNET_PYTHON={sys.executable}",
         os.path.join(ROOT, "experiments", "slurm", "youtube_faces.sbatch"), "--preset", "tiny",
         "--workdir", str(two), "--config.mesh.rows=2", "--config.mesh.cols=4",
         "--config.eval.enabled=False", *sgd]
  p = subprocess.run(cmd, env=cluster, capture_output=True, text=True, timeout=300)
  logs = "".join(f.read_text() for f in tmp_path.glob("slurm-*.out"))
  assert p.returncode == 0, p.stdout + p.stderr + logs
  assert "mesh: data 1 x rows 2 x cols 4" in logs  # 8 devices: 2 processes x 4
  assert logs.count("trained: 6 steps") == 1  # process 0 speaks for the run
  assert_trained_alike(one, two)
