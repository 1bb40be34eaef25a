"""Worker for tests/test_data.py: `MEDIA CACHE OPTIONS_JSON WORKERS FILES_PER_SHARD` ingests MEDIA
into a store under CACHE as process LCNET_PROCESS_ID of LCNET_NUM_PROCESSES (the local launcher's
environment; 0 of 1 without it) and says how many files this process decoded."""
import json
import os
import sys

from lcnet import data

if __name__ == "__main__":  # decoding workers are spawned: they import this file again
  media, cache, opts, workers, per_shard = sys.argv[1:6]
  fr = data.load_frames(media, data.FrameOptions(**json.loads(opts)), cache_dir=cache, progress=False,
                        process_index=int(os.environ.get("LCNET_PROCESS_ID", 0)),
                        process_count=int(os.environ.get("LCNET_NUM_PROCESSES", 1)),
                        workers=int(workers), files_per_shard=int(per_shard))
  print(f"decoded {fr.report['decoded_here']['files']} files; store has {len(fr.images)} frames",
        flush=True)
