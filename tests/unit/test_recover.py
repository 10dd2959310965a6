"""Which checkpoint a stage resumes from when Ray Train's record of its checkpoints is missing,
unreadable or empty: rayalign's own record (latest.json), never a folder it does not know complete."""

import json
import threading
import time

import pytest

from rayalign.learners import ResumeError
from rayalign.recovery import LATEST, SNAPSHOT, forget_recovered, record_latest, recover


def _folder(tmp_path, steps=(4, 8, 12), snapshot: str | None = None, latest: int | None = None):
    folder = tmp_path / "sft"
    for step in steps:
        (folder / f"step-{step:06d}").mkdir(parents=True)
    folder.mkdir(parents=True, exist_ok=True)
    if snapshot is not None:
        (folder / SNAPSHOT).write_text(snapshot)
    if latest is not None:
        record_latest(folder, f"step-{latest:06d}", {"step": latest, "loss": 0.5})
    return folder


def _listing(*steps: int) -> str:
    return json.dumps({"checkpoint_results": [{"checkpoint_dir_name": f"step-{s:06d}"} for s in steps]})


def _steps(folder) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*"))


def test_a_readable_snapshot_is_left_to_ray(tmp_path):
    folder = _folder(tmp_path, snapshot=_listing(4, 8), latest=8)
    assert recover(folder, settle_s=0) is None
    assert (folder / SNAPSHOT).exists() and _steps(folder) == [4, 8, 12]


def test_a_fresh_start_has_nothing_to_recover(tmp_path):
    assert recover(_folder(tmp_path, steps=()), settle_s=0) is None
    assert recover(_folder(tmp_path / "b", steps=(), snapshot=_listing()), settle_s=0) is None


def test_an_unreadable_snapshot_resumes_from_the_recorded_checkpoint(tmp_path):
    folder = _folder(tmp_path, snapshot='{"checkpoint_results": [{"checkpoint_dir_na', latest=8)
    got = recover(folder, settle_s=0)
    assert got.checkpoint == folder / "step-000008"
    assert got.summary == {"step": 8, "loss": 0.5}
    assert "is unreadable" in got.reason and str(folder / SNAPSHOT) in got.reason
    # Set aside for Ray Train to start a new record; step 12 was never recorded complete.
    assert not (folder / SNAPSHOT).exists() and (folder / f"{SNAPSHOT}.unreadable").exists()
    assert _steps(folder) == [4, 8]


@pytest.mark.parametrize("snapshot, problem", [(None, "is missing"), (_listing(), "lists no checkpoint")])
def test_a_snapshot_that_names_no_checkpoint_defers_to_the_record(tmp_path, snapshot, problem):
    folder = _folder(tmp_path, snapshot=snapshot, latest=12)
    got = recover(folder, settle_s=0)
    assert got.checkpoint == folder / "step-000012" and got.reason.endswith(problem)
    assert _steps(folder) == [4, 8, 12]


def test_an_unreadable_snapshot_without_a_record_names_the_file(tmp_path):
    folder = _folder(tmp_path, snapshot="")
    with pytest.raises(ResumeError, match=rf"{SNAPSHOT}: .* is unreadable .*{LATEST} is missing.*--restart"):
        recover(folder, settle_s=0)


def test_a_snapshot_being_rewritten_is_read_again(tmp_path):
    folder = _folder(tmp_path, snapshot="{", latest=8)
    writer = threading.Timer(0.3, (folder / SNAPSHOT).write_text, [_listing(4, 8)])  # finishes while recover waits
    writer.start()
    start = time.monotonic()
    try:
        assert recover(folder, settle_s=30, poll_s=0.05) is None  # Ray Train resumes from its own record
    finally:
        writer.join()
    assert 0.3 <= time.monotonic() - start < 30
    assert _steps(folder) == [4, 8, 12] and not (folder / (SNAPSHOT + ".unreadable")).exists()  # left to Ray


def test_forget_recovered_keeps_the_new_record_and_the_result(tmp_path):
    folder = _folder(tmp_path, steps=(4, 8, 12, 16))
    forget_recovered(folder, folder / "step-000008", keep=folder / "step-000016")
    assert _steps(folder) == [12, 16]  # Ray Train's new record: 12 and 16
    folder = _folder(tmp_path / "final", steps=(4, 8))
    forget_recovered(folder, folder / "step-000008", keep=folder / "step-000008")  # resumed at the last step
    assert _steps(folder) == [8]


def test_the_record_is_replaced_whole(tmp_path):
    folder = _folder(tmp_path, latest=4)
    record_latest(folder, "step-000008", {"step": 8})
    assert json.loads((folder / LATEST).read_text()) == {"checkpoint": "step-000008", "summary": {"step": 8}}
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
