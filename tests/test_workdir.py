"""The workdir layout (dirroute_jax/workdir.py): names on disk, gs:// paths, the write probe."""

import pytest

from dirroute_jax import workdir as workdir_lib


def test_names_are_the_on_disk_format():
  # Renaming any of these orphans every existing workdir (a resume would start over,
  # analysis would not find the tokenizer): change them only with a migration.
  assert (
    workdir_lib.CHECKPOINTS,
    workdir_lib.CORRUPT_CHECKPOINTS,
    workdir_lib.DIVERGED_CHECKPOINTS,
    workdir_lib.METRICS,
    workdir_lib.TENSORBOARD,
    workdir_lib.DATA_FINGERPRINT,
    workdir_lib.TOKENIZER,
    workdir_lib.WRITER_LOCK,
  ) == (
    "checkpoints",
    "corrupt_checkpoints",
    "diverged_checkpoints",
    "metrics.jsonl",
    "tensorboard",
    "data_fingerprint.json",
    "tokenizer.json",
    "writer.lock",
  )


def test_remote_paths_keep_their_scheme(tmp_path):
  assert str(workdir_lib.tokenizer("gs://bucket/run/")) == "gs://bucket/run/tokenizer.json"
  assert workdir_lib.is_remote("gs://bucket/run") and not workdir_lib.is_remote(tmp_path)
  assert str(workdir_lib.metrics(tmp_path)) == str(tmp_path / "metrics.jsonl")


def test_write_probe_creates_the_directory_and_leaves_nothing(tmp_path):
  workdir_lib.check_writable(tmp_path / "a" / "b")
  assert list((tmp_path / "a" / "b").iterdir()) == []
  (tmp_path / "file").write_text("")
  with pytest.raises(OSError):
    workdir_lib.check_writable(tmp_path / "file" / "run")
