"""The backends factory: a settings URL opens its backend, creating the state folders."""

from __future__ import annotations

import pytest

from batchfarm.actors.backends import COMPLETIONS, TASKS, open_blobs, open_queue, open_store
from batchfarm.actors.backends.blobs.local import LocalBlobStore
from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.queue.local import LocalQueue
from batchfarm.actors.errors import BackendError
from batchfarm.actors.settings import QueueSettings, StorageSettings, load


def test_defaults_open_all_three_backends_under_a_new_state_dir(tmp_path):
    state = tmp_path / "state" / "grid-a"
    settings = load(None, {"BATCHFARM_GRID_STATE_DIR": str(state)}).settings

    tasks = open_queue(settings.queue, TASKS)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    store = open_store(settings.store)
    try:
        assert isinstance(tasks, LocalQueue)
        assert isinstance(blobs, LocalBlobStore)
        tasks.send_batch([Outgoing(body='{"task": 1}')])
        # Two roles, two queues in the one file: a task is not a completion.
        assert tasks.depth().visible == 1
        assert completions.depth().visible == 0
        blobs.put("jobs/j1/raw/input.bin", b"abc")
        assert blobs.read("jobs/j1/raw/input.bin") == b"abc"
        assert store.jobs() == []
    finally:
        tasks.close()
        completions.close()
        blobs.close()
        store.close()
    assert sorted(p.name for p in state.iterdir()) >= ["blobs", "grid.db", "queue.db"]


def test_settings_are_honoured(tmp_path):
    queue = open_queue(QueueSettings(url=f"local://{tmp_path}/q/queue.db", max_receives=1), TASKS)
    try:
        queue.send_batch([Outgoing(body="x")])
        first = queue.receive(1, wait_s=0, visibility_s=1)
        assert len(first) == 1
        queue.change_visibility_batch([(first[0].receipt, 0)]).raise_for_failures()
        # max_receives=1: the second receive finds it in the dead-letter queue instead.
        assert queue.receive(1, wait_s=0, visibility_s=1) == []
        assert queue.depth().dead == 1
    finally:
        queue.close()
    blobs = open_blobs(StorageSettings(url=f"file://{tmp_path}/b", chunk_size=64 * 1024))
    try:
        blobs.put("k", b"\0" * (200 * 1024))
        assert [len(c) for c in blobs.get("k")] == [65536, 65536, 65536, 8192]
    finally:
        blobs.close()


@pytest.mark.parametrize(
    ("opener", "url", "scheme"),
    [
        (lambda url: open_queue(QueueSettings(url=url), TASKS), "amqp://grid", "amqp"),
        (lambda url: open_blobs(StorageSettings(url=url)), "gs://bucket/p", "gs"),
    ],
)
def test_a_scheme_without_a_backend_is_named(opener, url, scheme):
    with pytest.raises(BackendError, match=f"no {scheme}:// backend"):
        opener(url)


def test_an_uncreatable_state_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BackendError, match="cannot create the folder"):
        open_blobs(StorageSettings(url=f"file://{tmp_path}/file/blobs"))
