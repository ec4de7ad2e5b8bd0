"""YAML settings files read strictly: plain values with their lines, every fault at once."""

from __future__ import annotations

import pytest

from powerstrip.hooks.yamlfile import LinedDict, YamlError, load


def test_mappings_know_the_line_of_each_key() -> None:
    found = load("a: 1\nb:\n  c: [x, y]\n  d: ~\n", "f.yml")
    assert found == {"a": 1, "b": {"c": ["x", "y"], "d": None}}
    assert isinstance(found, LinedDict) and found.lines == {"a": 1, "b": 2}
    assert found["b"].lines == {"c": 3, "d": 4}


def test_every_fault_is_reported_with_file_and_line() -> None:
    with pytest.raises(YamlError) as caught:
        load("a: 1\nb: 2\na: 3\n4: x\n", "f.yml")
    assert caught.value.errors == [
        "f.yml:3: duplicate key 'a': it is also on line 1; "
        "YAML would silently keep only the last one",
        "f.yml:4: keys must be strings, got the number 4; quote it",
    ]


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(YamlError, match=r"^f.yml:2: YAML syntax error: "):
        load("a: 1\nb: [\n", "f.yml")


def test_an_alias_is_its_anchor_so_nested_aliases_stay_small() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    found = load("\n".join(lines) + "\n", "f.yml")
    assert found["a8"][0] is found["a7"] and found["a8"][9] is found["a7"]


def test_a_value_that_contains_itself_is_refused() -> None:
    with pytest.raises(YamlError, match=r"f.yml:1: a value that contains itself"):
        load("a: &x [1, *x]\n", "f.yml")


def test_an_empty_file_is_none() -> None:
    assert load("", "f.yml") is None
