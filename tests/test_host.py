"""flowc.host.keep_big_blocks: glibc's malloc thresholds set for the process, the
environment's own choice left alone."""

import os
import subprocess
import sys

import pytest

CALL = "from flowc.host import keep_big_blocks; print(keep_big_blocks())"


def run(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_thresholds_are_set_unless_the_environment_chose():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert run(clean) == "True"  # mallopt accepted both thresholds
    assert run({**clean, "MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"
