import os
import stat

from hf_backdoor_defense.atomic import write_json_atomic, write_text_atomic


def test_json_written_whole_with_usual_permissions(tmp_path):
    target = tmp_path / "deep" / "results.json"
    write_json_atomic(target, {"cacc": 0.5, "tags": {"b", "a"}})
    assert target.read_text() == '{\n  "cacc": 0.5,\n  "tags": [\n    "a",\n    "b"\n  ]\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temporary file left


def test_failed_write_keeps_the_old_file(tmp_path):
    target = write_text_atomic(tmp_path / "card.md", "old")

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    try:
        write_json_atomic(target, {"x": Unserialisable()})
    except RuntimeError:
        pass
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
