"""A streamed, chunked query run for tests/test_stream.py's kill -9 test.

Usage: ``python tests/stream_query_workload.py CACHE_DIR LEDGER_DIR BUDGET CHUNK PAUSE``

Buys ``BUDGET`` answers of a tiny victim (ResNet-10 width 4, fixed init) for the first
Fashion-MNIST test images, read lazily (``data.stream.StreamSource``), into the chunked
answer cache ``CACHE_DIR`` (``pipeline.queries.cached_answers(chunk=CHUNK)``), through
:class:`DurableLedgerAPI`: the served API's ledger in miniature, kept in files under
``LEDGER_DIR`` so it outlives the process, as a real provider's does. After each chunk is
answered the run sleeps ``PAUSE`` seconds before the cache commits it, so a test can kill
the process between a charge and its commit (the window where only idempotent request
ids keep a chunk from being charged twice).
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.data.stream import StreamSource
from sslsteal_jax.models import build_simclr
from sslsteal_jax.pipeline.queries import cached_answers


class DurableLedgerAPI:
    """Charges each request id once, in files (the served ledger's ``pending`` then
    ``done`` records, ``serve.ledger``): ``charged_<id>.json`` (``{"n": images}``) is
    written before answering, ``answer_<id>.npy`` after; a repeated id is answered from
    the file (replay) or, charged but unanswered, recomputed without a new charge."""

    def __init__(self, api: VictimAPI, ledger_dir: str):
        self.api, self.dir = api, ledger_dir
        os.makedirs(ledger_dir, exist_ok=True)

    def _write(self, path, write):
        with open(path + ".tmp", "wb") as f:
            write(f)
        os.replace(path + ".tmp", path)

    def query(self, user, images, request_id):
        answer = os.path.join(self.dir, f"answer_{request_id}.npy")
        charged = os.path.join(self.dir, f"charged_{request_id}.json")
        if os.path.exists(charged):  # a repeated id: replay, or resume without a charge
            with open(os.path.join(self.dir, "replays.log"), "a") as f:
                f.write(request_id + "\n")
            if os.path.exists(answer):
                return np.load(answer)
        else:
            self._write(charged, lambda f: f.write(json.dumps({"n": len(images)}).encode()))
        out = self.api.forward(self.api.validate(images))
        self._write(answer, lambda f: np.save(f, out))
        return out


def main(cache_dir, ledger_dir, budget, chunk, pause):
    cfg = ml_collections.ConfigDict(dict(arch="resnet10", width=4, stem="cifar",
                                         head_hidden=16, head_out=8))
    model = build_simclr(cfg)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"),
                                    jnp.zeros((2, 28, 28, 1), jnp.float32))
    api = DurableLedgerAPI(VictimAPI(model, variables, (28, 28, 1), batch_size=32), ledger_dir)
    pool = StreamSource("fashion_mnist", "test", stop=5000)

    def buy(start, stop, request_id):
        x, y = collect_answers(api, "attacker", pool, stop, chunk=chunk, start=start,
                               request_id=request_id, progress=False)
        time.sleep(pause)  # charged and answered, not yet committed by the cache
        # what the ledger charged for this chunk's requests (in this or a killed attempt)
        mine = [f for f in os.listdir(ledger_dir)
                if f.startswith(f"charged_{request_id}.") and f.endswith(".json")]
        return x, y, sum(json.load(open(os.path.join(ledger_dir, f)))["n"] for f in mine)

    got = cached_answers(cache_dir, {"pool": "fashion_mnist/test[:5000]", "query_set": "clean"},
                         budget, buy, chunk=chunk)
    print(json.dumps({"queries_charged": got.queries_charged,
                      "total_charged": got.total_charged}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
