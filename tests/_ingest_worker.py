"""Worker for tests/test_data.py: `MEDIA CACHE OPTIONS_JSON WORKERS FILES_PER_SHARD` ingests MEDIA
into a store under CACHE as process LCNET_PROCESS_ID of LCNET_NUM_PROCESSES (the local launcher's
environment, through lcnet.distributed; 0 of 1 without it) and says how many files this process
decoded. LCNET_TEST_HIDE="P:NAME" hides file NAME from process P's scan of MEDIA."""
import json
import os
import sys

from lcnet import data, distributed

if __name__ == "__main__":  # decoding workers are spawned: they import this file again
  media, cache, opts, workers, per_shard = sys.argv[1:6]
  distributed.initialize()  # under the launcher: the processes agree on the plans through it
  if hide := os.environ.get("LCNET_TEST_HIDE"):  # "P:NAME": process P's scan misses NAME, as if
    who, name = hide.split(":")  # NAME appeared after (P=1) or before (P=0) process 0 scanned
    if who == os.environ.get("LCNET_PROCESS_ID", "0"):
      scan = data.scan
      data.scan = lambda p: [f for f in scan(p) if os.path.basename(f) != name]
  fr = data.load_frames(media, data.FrameOptions(**json.loads(opts)), cache_dir=cache, progress=False,
                        process_index=int(os.environ.get("LCNET_PROCESS_ID", 0)),
                        process_count=int(os.environ.get("LCNET_NUM_PROCESSES", 1)),
                        workers=int(workers), files_per_shard=int(per_shard))
  print(f"decoded {fr.report['decoded_here']['files']} files; store has {len(fr.images)} frames",
        flush=True)
