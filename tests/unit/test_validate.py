"""`kubetune validate`: every bad manifest yields exactly the expected messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.validate import validate_file, validate_text
from kubetune.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests/fixtures/bad-manifests").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def expected(path: Path) -> list[str]:
    """The `# expect: LINE: MESSAGE` header lines of a bad manifest."""
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


def test_there_are_enough_bad_manifests() -> None:
    assert len(BAD) >= 25


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_manifest_messages(path: Path) -> None:
    want = expected(path)
    assert want, f"{path.name} has no '# expect:' lines"
    got = [str(p).removeprefix(f"{path}:").removeprefix(" ") for p in validate_file(path).problems]
    assert got == want


@pytest.mark.parametrize("path", BAD[:3], ids=lambda p: p.stem)
def test_cli_exits_1_and_prints_file_line_path(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:")
    assert expected(path)[0] in err


def test_every_example_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(EXAMPLES) >= 5
    assert main(["validate", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert out.count(" valid") == len(EXAMPLES)


def test_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    result = validate_file(tmp_path / "nope.yaml")
    assert len(result.problems) == 1
    assert "cannot read file" in result.problems[0].message


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(EXAMPLES[0].read_text()))
    assert main(["validate", "-"]) == 0


YAML_BEYOND_DATA = [
    # found by tests/unit/test_fuzz_validate.py: each raised out of `kubetune validate`
    ("? [a, b]\n: 1\n", 1, "YAML error: found unhashable key"),
    ("x: !!python/object:os.system ls\n", 1, "YAML error: could not determine a constructor"),
    ("a: &loop [*loop]\n", 1, "document 1 contains itself through an alias"),
    ("y: " + "[" * 2000 + "]" * 2000 + "\n", 1, "YAML nested too deeply to read"),
    ("a: 1\n\x08b: 2\n", 2, "YAML syntax error: unacceptable character #x0008"),
]


@pytest.mark.parametrize(
    ("head", "line", "says"),
    YAML_BEYOND_DATA,
    ids=["unhashable-key", "python-tag", "alias-loop", "deep-nesting", "control-character"],
)
def test_yaml_beyond_plain_data_is_a_problem_with_a_line_not_a_traceback(
    head: str, line: int, says: str
) -> None:
    text = head + EXAMPLES[0].read_text()
    problems = validate_text(text, "job.yaml").problems
    assert len(problems) == 1 and problems[0].line == line, problems
    assert str(problems[0]).startswith(f"job.yaml:{line}: {says}"), problems[0]
