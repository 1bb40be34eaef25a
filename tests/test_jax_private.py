"""Every private jax internal lcnet uses (`lcnet._jax_private`) still exists and answers: a jax
upgrade that moves one fails here, naming it, instead of deep inside a multi-process run."""
import subprocess
import sys

from lcnet import _jax_private


def test_only_the_adapter_imports_private_jax():
  import pathlib
  root = pathlib.Path(_jax_private.__file__).parent
  users = sorted(p.name for p in root.glob("*.py") if "jax._src" in p.read_text()
                 and p.name != "_jax_private.py")
  assert users == [], f"import jax internals only through lcnet/_jax_private.py: {users}"


def test_each_internal_answers_in_a_single_process(monkeypatch):
  for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(var, raising=False)
  assert _jax_private.cluster_env_present() is False
  assert _jax_private.coordination_client() is None  # jax.distributed not started
  assert _jax_private.process_id() == 0
  assert _jax_private.preemption_service_running() is False
  import jax
  jax.devices()
  assert _jax_private.backends_started() and _jax_private.cpu_backend_started()


def test_slurm_and_open_mpi_are_detected_from_their_environment(monkeypatch):
  slurm = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}  # what srun sets for each task
  with monkeypatch.context() as m:
    for k, v in slurm.items():
      m.setenv(k, v)
    assert _jax_private.cluster_env_present() is True
  assert _jax_private.cluster_env_present() is False
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1234.0;tcp://127.0.0.1:5678")
  assert _jax_private.cluster_env_present() is True


def test_backends_not_started_in_a_fresh_process():
  code = ("from lcnet import _jax_private as p; assert not p.backends_started(); "
          "import jax; jax.devices(); assert p.backends_started()")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
