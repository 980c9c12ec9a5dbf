"""The atomic push: a version folder appears whole or not at all, and concurrent pushes never share one."""

from __future__ import annotations

import os
import threading

from components.atomic_pusher import STAGING_PREFIX, publish
from components.serving_gate import model_digest
from contracts.artifacts import served_versions


def test_two_pushes_in_one_second_get_two_whole_versions(tmp_path, model_exports):
    base = tmp_path / "bloodcell"
    first, path_one = publish(str(model_exports["random"]), str(base))
    second, path_two = publish(str(model_exports["basophil"]), str(base))
    assert second == first + 1 and served_versions(str(base)) == [first, second]
    assert model_digest(path_one) == model_digest(str(model_exports["random"]))
    assert model_digest(path_two) == model_digest(str(model_exports["basophil"]))
    assert sorted(os.listdir(base)) == [str(first), str(second)]  # no staging folder left behind


def test_concurrent_pushes_each_get_their_own_version(tmp_path, model_exports):
    base = str(tmp_path / "bloodcell")
    results, lock = [], threading.Lock()

    def push(name: str) -> None:
        version, path = publish(str(model_exports[name]), base)
        with lock:
            results.append((version, name, path))

    threads = [threading.Thread(target=push, args=(name,)) for name in ("random", "basophil", "myeloblast") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({v for v, _, _ in results}) == 6 and served_versions(base) == sorted(v for v, _, _ in results)
    for _, name, path in results:  # each version holds exactly the model its push reported
        assert model_digest(path) == model_digest(str(model_exports[name]))


def test_a_staging_folder_is_never_a_version(tmp_path, model_exports):
    base = tmp_path / "bloodcell"
    (base / f"{STAGING_PREFIX}abc").mkdir(parents=True)
    (base / f"{STAGING_PREFIX}abc" / "saved_model.pb").write_bytes(b"half")
    assert served_versions(str(base)) == []
