"""Shared asserts for the exercise-checker tests (``tests/test_exercises_*.py``): a checker prints one ✅ or ❌ line per
call and returns True or False; these helpers check both, and that a rejection's hint names what is wrong."""

from __future__ import annotations


def outcomes(capsys) -> list[str]:
    """The ✅/❌ lines the checks printed since the last call."""
    return capsys.readouterr().out.splitlines()


def accepts(check, *answers, capsys, args=()) -> None:
    """Every answer passes ``check(answer, *args)``, each with one ✅ line."""
    for answer in answers:
        assert check(answer, *args) is True, answer
    lines = outcomes(capsys)
    assert len(lines) == len(answers) and all(line.startswith("✅") for line in lines), lines


def rejects(check, answer, *hint_words, capsys, args=()) -> None:
    """``check(answer, *args)`` is False, prints one ❌ line, and its hint contains every one of ``hint_words``."""
    assert check(answer, *args) is False, answer
    lines = outcomes(capsys)
    assert len(lines) == 1 and lines[0].startswith("❌"), lines
    for word in hint_words:
        assert word in lines[0], (word, lines[0])
