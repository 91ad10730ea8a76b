"""pipeline/storage.py: a file:// URL is local disk, spelt another way, for every primitive."""

import pytest

from pipeline import storage


@pytest.mark.parametrize(
    ("path", "remote"),
    [
        ("s3://b/k", True),
        ("gs://b/k", True),
        ("/tmp/out", False),
        ("out/dt=2026-11-28", False),
        ("file:///tmp/o", False),
    ],
)
def test_only_an_object_store_is_remote(path, remote):
    assert storage.is_remote(path) is remote


def test_a_file_url_is_written_read_listed_and_deleted_as_the_local_path_it_names(tmp_path):
    root = f"file://{tmp_path}/out"
    manifest = storage.join(root, "dt=2026-11-28", "_SUCCESS")
    assert manifest == f"file://{tmp_path}/out/dt=2026-11-28/_SUCCESS"
    storage.write_json(manifest, {"rows": 3})
    assert (tmp_path / "out" / "dt=2026-11-28" / "_SUCCESS").is_file()  # on disk, not under a folder named file:
    assert storage.exists(manifest) and storage.read_json(manifest) == {"rows": 3}
    assert storage.list_paths(storage.join(root, "*", "_SUCCESS")) == [manifest]
    assert storage.create_if_absent(storage.join(root, "lease.json"), b"{}")
    assert not storage.create_if_absent(storage.join(root, "lease.json"), b"{}")
    storage.move(manifest, storage.join(root, "moved"))
    assert (tmp_path / "out" / "moved").is_file() and not storage.exists(manifest)
    storage.delete_tree(root)
    assert not (tmp_path / "out").exists()


def test_a_file_url_and_its_path_have_the_same_real_path(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = str((tmp_path / "real").resolve())
    assert storage.real_path(f"file://{tmp_path}/link") == storage.real_path(str(tmp_path / "link")) == real


def test_an_object_store_path_is_its_own_real_path():
    """The twin: no links to resolve, and no local folder of that name is looked up."""
    assert storage.real_path("s3://bucket/out/") == "s3://bucket/out"
