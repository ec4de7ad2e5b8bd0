"""The adapters file: the 2015 format read verbatim, and every fault reported at its line."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import re
import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode

from powerstrip.hooks.config import (
    DEFAULT_MAX_BODY,
    DEFAULT_TIMEOUT,
    EMPTY,
    AdapterSpec,
    AdapterTarget,
    ClientRule,
    Config,
    ConfigError,
    Endpoint,
    load_config,
    parse_config,
)

ORIGINAL = """\
version: 1
endpoints:
  "POST /*/containers/create":
    pre: [flocker, weave]
    post: [weave]
  "POST /*/containers/*/start":
    post: [weave]
adapters:
  flocker: http://flocker/flocker-adapter
  weave: http://weave/extension
"""


def errors_of(text: str) -> list[str]:
    """The messages parse_config gives for ``text`` (named f.yml); fails if it is accepted."""
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "f.yml")
    return caught.value.errors


def assert_errors(text: str, expected: list[tuple[int, str]]) -> None:
    """Exactly these faults, in this order: each at its line, each containing its phrase."""
    errors = errors_of(text)
    assert len(errors) == len(expected), errors
    for message, (line, phrase) in zip(errors, expected, strict=True):
        assert message.startswith(f"f.yml:{line}: "), errors
        assert phrase in message, errors


def with_adapters(endpoints: str, adapters: str = "a: http://a/hook") -> str:
    """A file with the given endpoints section body; 'endpoints:' is on line 1."""
    return "endpoints:\n" + textwrap.indent(textwrap.dedent(endpoints), "  ") + (
        "adapters:\n" + textwrap.indent(textwrap.dedent(adapters), "  ")
    )


# --- the original format ---------------------------------------------------------------------


def test_original_example_loads_with_its_structure_and_order():
    config = parse_config(ORIGINAL, "adapters.yml")
    assert config.source == "adapters.yml"
    assert config.max_body == DEFAULT_MAX_BODY == 4194304
    assert config.endpoints == (
        Endpoint("POST /*/containers/create", "POST", "/*/containers/create",
                 ("flocker", "weave"), ("weave",), 3),
        Endpoint("POST /*/containers/*/start", "POST", "/*/containers/*/start", (), ("weave",), 6),
    )
    assert list(config.adapters) == ["flocker", "weave"]
    assert config.adapters["flocker"] == AdapterSpec(
        "flocker", "http://flocker/flocker-adapter",
        AdapterTarget("http", "http://flocker/flocker-adapter", None, "/flocker-adapter"),
        timeout=DEFAULT_TIMEOUT, on_error="fail", line=9,
    )
    assert config.adapters["weave"].target.http_path == "/extension"
    assert config.adapters["weave"].line == 10


def test_version_is_optional_and_sections_may_be_empty():
    config = parse_config("endpoints: {}\nadapters: {}\n")
    assert config.endpoints == ()
    assert config.adapters == {}
    assert config.source == "<string>"


def test_endpoint_with_no_hooks_or_empty_lists_is_allowed():
    config = parse_config(with_adapters('"GET /x": {}\n"GET /y": {pre: [], post: []}\n'))
    assert [(e.pre, e.post) for e in config.endpoints] == [((), ()), ((), ())]


def test_unused_adapters_and_repeated_names_in_a_list_are_allowed():
    config = parse_config(with_adapters('"GET /x": {pre: [a, a]}\n', "a: http://a/\nb: http://b/\n"))
    assert config.endpoints[0].pre == ("a", "a")
    assert set(config.adapters) == {"a", "b"}


def test_empty_config_constant():
    assert EMPTY == Config(endpoints=(), adapters={}, source=None, max_body=DEFAULT_MAX_BODY)


def test_config_is_frozen():
    config = parse_config(ORIGINAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_body = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.endpoints[0].pre = ()  # type: ignore[misc]


# --- endpoint keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "method", "pattern"),
    [
        ("POST /*/containers/create", "POST", "/*/containers/create"),
        ("* /containers/*", "*", "/containers/*"),
        ("GET *", "GET", "*"),
        ("DELETE /containers/?bc", "DELETE", "/containers/?bc"),
        ("GET /images/[a-z]*/json", "GET", "/images/[a-z]*/json"),
        ("PROPFIND /", "PROPFIND", "/"),
    ],
)
def test_endpoint_keys(key, method, pattern):
    config = parse_config(with_adapters(f"{json.dumps(key)}: {{pre: [a]}}\n"))
    assert (config.endpoints[0].key, config.endpoints[0].method) == (key, method)
    assert config.endpoints[0].pattern == pattern


@pytest.mark.parametrize(
    ("key", "phrase"),
    [
        ("POST", "exactly one space"),
        ("POST  /x", "exactly one space"),
        ("POST /x /y", "exactly one space"),
        (" POST /x", "exactly one space"),
        ("POST\t/x", "exactly one space"),
        ("", "exactly one space"),
        ("post /x", "methods are written in capitals: 'POST'"),
        ("PO-ST /x", "must be * or an HTTP method"),
        ("POST containers/create", "must start with '/'"),
        ("POST ", "must start with '/'"),
        ("POST ?x", "must start with '/'"),
        (" ", "must be * or an HTTP method"),
    ],
)
def test_malformed_endpoint_keys(key, phrase):
    text = with_adapters(f'"GET /ok": {{}}\n{json.dumps(key)}: {{pre: [a]}}\n')
    assert_errors(text, [(3, phrase)])


# --- adapters: URL and mapping forms ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://flocker/flocker-adapter",
         AdapterTarget("http", "http://flocker/flocker-adapter", None, "/flocker-adapter")),
        ("http://10.0.0.5:8080/hook?x=1&y=2",
         AdapterTarget("http", "http://10.0.0.5:8080/hook?x=1&y=2", None, "/hook?x=1&y=2")),
        ("http://weave", AdapterTarget("http", "http://weave", None, "/")),
        ("http://[::1]:9000/a", AdapterTarget("http", "http://[::1]:9000/a", None, "/a")),
        ("https://hooks.example.com/v1/pre",
         AdapterTarget("https", "https://hooks.example.com/v1/pre", None, "/v1/pre")),
        ("unix:///run/plugins/flocker.sock:/flocker-adapter",
         AdapterTarget("unix", "http://localhost/flocker-adapter", "/run/plugins/flocker.sock",
                       "/flocker-adapter")),
        ("unix:///run/x.sock", AdapterTarget("unix", "http://localhost/", "/run/x.sock", "/")),
        ("unix:///run/x.sock:/", AdapterTarget("unix", "http://localhost/", "/run/x.sock", "/")),
        ("unix:///run/a:b.sock:/p:/q?x=1",
         AdapterTarget("unix", "http://localhost/p:/q?x=1", "/run/a:b.sock", "/p:/q?x=1")),
        ("http+unix://%2Frun%2Fx.sock/path",
         AdapterTarget("unix", "http://localhost/path", "/run/x.sock", "/path")),
        ("http+unix://%2Frun%2Fx.sock",
         AdapterTarget("unix", "http://localhost/", "/run/x.sock", "/")),
        ("http+unix://%2Frun%2Fx.sock/p?q=1",
         AdapterTarget("unix", "http://localhost/p?q=1", "/run/x.sock", "/p?q=1")),
    ],
)
def test_adapter_url_forms(url, target):
    config = parse_config(with_adapters("{}\n", f"a: {json.dumps(url)}\n"))
    adapter = config.adapters["a"]
    assert (adapter.url, adapter.target) == (url, target)


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("ftp://x/y", "unsupported scheme 'ftp'"),
        ("ws://x/y", "unsupported scheme 'ws'"),
        ("flocker/adapter", "has no scheme"),
        ("unix:/run/x.sock", "has no scheme"),
        ("unix://run/x.sock", "socket path must be absolute"),
        ("unix://", "socket path must be absolute"),
        ("unix:///", "names a directory"),
        ("unix:///run/", "names a directory"),
        ("unix:///run/x.sock:", "ends with ':'"),
        ("http+unix://run/x.sock/p", "socket path must be absolute"),
        ("http+unix:///run/x.sock/p", "socket path must be absolute"),
        ("http:///path", "has no host"),
        ("http://:80/path", "has no host"),
        ("http://h:99999/", "bad port"),
        ("http://h:0/", "bad port"),
        ("http://h:x/", "bad port"),
        ("http://h/a b", "whitespace"),
        (" http://h/", "whitespace"),
        ("", "empty"),
        ("http://h/p#frag", "fragment"),
    ],
)
def test_bad_adapter_urls(url, phrase):
    text = with_adapters("{}\n", f"ok: http://ok/\nbad: {json.dumps(url)}\n")
    assert_errors(text, [(5, phrase)])
    assert errors_of(text)[0].startswith(f"f.yml:5: adapter 'bad': URL {url!r}")


def test_bad_url_in_mapping_form_is_reported_at_the_url():
    text = with_adapters("{}\n", "a:\n  timeout: 3\n  url: ftp://x/\n")
    assert_errors(text, [(6, "unsupported scheme")])


def test_adapter_mapping_form_defaults():
    config = parse_config(with_adapters('"GET /x": {pre: [a]}\n', "a: {url: http://a/h}\n"))
    assert config.adapters["a"] == AdapterSpec(
        "a", "http://a/h", AdapterTarget("http", "http://a/h", None, "/h"),
        timeout=10.0, on_error="fail", line=4,
    )


def test_adapter_mapping_form_settings():
    text = with_adapters("{}\n", """\
        slow:
          url: unix:///run/slow.sock:/hook
          timeout: 2.5
          on_error: skip
        fast: {url: "http://f/", timeout: 1, on_error: fail}
        """)
    config = parse_config(text)
    slow, fast = config.adapters["slow"], config.adapters["fast"]
    assert (slow.timeout, slow.on_error, slow.line) == (2.5, "skip", 4)
    assert slow.target == AdapterTarget("unix", "http://localhost/hook", "/run/slow.sock", "/hook")
    assert (fast.timeout, fast.on_error, fast.line) == (1.0, "fail", 8)
    assert isinstance(fast.timeout, float)


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("0", "above 0, got 0"),
        ("-1", "above 0, got -1"),
        (".inf", "finite"),
        (".nan", "finite"),
        ('"5"', "must be a number of seconds, got the string '5'"),
        ("true", "got the boolean true"),
        ("[1]", "got a list"),
    ],
)
def test_bad_timeouts(value, phrase):
    text = with_adapters("{}\n", f"a:\n  url: http://a/\n  timeout: {value}\n")
    assert_errors(text, [(6, phrase)])


@pytest.mark.parametrize("value", ["ignore", "FAIL", "true", "1"])
def test_bad_on_error(value):
    text = with_adapters("{}\n", f"a:\n  url: http://a/\n  on_error: {value}\n")
    assert_errors(text, [(6, "must be 'fail' or 'skip'")])


def test_adapter_mapping_without_url():
    text = with_adapters("{}\n", "a:\n  timeout: 3\n")
    assert_errors(text, [(4, "adapter 'a' has no 'url'")])


@pytest.mark.parametrize(
    ("value", "phrase"),
    [("[http://a/]", "got a list"), ("5", "got the number 5"), ("yes", "got the boolean yes")],
)
def test_adapter_of_the_wrong_type(value, phrase):
    assert_errors(with_adapters("{}\n", f"ok: http://a/\nbad: {value}\n"), [(5, phrase)])


def test_url_of_the_wrong_type_in_mapping_form():
    text = with_adapters("{}\n", "a: {url: 8080}\n")
    assert_errors(text, [(4, "'url' of adapter 'a' must be a string, got the number 8080")])


def test_adapter_names_must_be_strings_and_not_empty():
    text = with_adapters("{}\n", '1: http://a/\nyes: http://b/\n"": http://c/\n')
    assert_errors(text, [
        (4, "keys must be strings, got the number 1"),
        (5, "keys must be strings, got the boolean yes"),
        (6, "adapter names must not be empty"),
    ])


# --- max_body and version --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1", 1),
        ("65536", 65536),
        ('"4096"', 4096),
        ("4MiB", 4 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1MB", 1_000_000),
        ("2 GiB", 2 * 1024**3),
        ("1.5KiB", 1536),
        ("10kb", 10_000),
        ("100B", 100),
        ("1_048_576", 1048576),
    ],
)
def test_max_body(value, size):
    config = parse_config(f"max_body: {value}\nendpoints: {{}}\nadapters: {{}}\n")
    assert config.max_body == size


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("0", "more than 0 bytes, got 0"),
        ("-1", "more than 0 bytes, got -1"),
        ('"0KiB"', "more than 0 bytes"),
        ("1.3B", "got the string '1.3B'"),
        ("4XB", "got the string '4XB'"),
        ("4 M", "got the string '4 M'"),
        ("MiB", "got the string 'MiB'"),
        ("2.5", "got the number 2.5"),
        ("true", "got the boolean true"),
        ("[1]", "got a list"),
    ],
)
def test_bad_max_body(value, phrase):
    text = f"endpoints: {{}}\nadapters: {{}}\nmax_body: {value}\n"
    assert_errors(text, [(3, phrase)])


@pytest.mark.parametrize("value", ["2", '"1"', "1.0", "true", "[1]"])
def test_version_must_be_1(value):
    assert_errors(f"endpoints: {{}}\nversion: {value}\nadapters: {{}}\n", [(2, "must be 1")])


# --- structural faults, each at its line -----------------------------------------------------


def test_missing_sections():
    assert_errors("version: 1\n", [
        (1, "missing 'endpoints'"), (1, "missing 'adapters'"),
    ])
    assert_errors("version: 1\nendpoints: {}\n", [(1, "missing 'adapters'")])
    assert_errors("adapters: {}\n", [(1, "missing 'endpoints'")])


def test_undefined_names_are_not_reported_without_an_adapters_section():
    assert_errors('endpoints:\n  "GET /x": {pre: [a]}\n', [(1, "missing 'adapters'")])
    assert_errors('endpoints:\n  "GET /x": {pre: [a]}\nadapters:\n', [(3, "'adapters' is empty")])


@pytest.mark.parametrize("text", ["", "# nothing\n", "---\n", "~\n"])
def test_empty_file(text):
    assert_errors(text, [(1, "the file is empty")])


@pytest.mark.parametrize(("text", "what"), [("- a\n", "a list"), ("hello\n", "the string")])
def test_top_level_must_be_a_mapping(text, what):
    assert_errors(text, [(1, f"the top level must be a mapping with 'endpoints' and 'adapters', "
                             f"got {what}")])


def test_null_values_are_reported_at_their_keys():
    text = """\
        version:
        max_body:
        endpoints:
        adapters:
        """
    assert_errors(text, [
        (1, "'version' is empty (null)"),
        (2, "'max_body' is empty (null)"),
        (3, "'endpoints' is empty (null)"),
        (4, "'adapters' is empty (null)"),
    ])


def test_null_values_inside_sections():
    text = """\
        endpoints:
          "GET /a":
          "GET /b":
            pre:
            post: ~
          "GET /c": {pre: [a, ~]}
        adapters:
          a: http://a/
          b:
          c: {url: }
          d: {url: "http://d/", timeout: , on_error: null}
        """
    assert_errors(text, [
        (2, "endpoint 'GET /a' is empty (null)"),
        (4, "'pre' of endpoint 'GET /b' is empty (null)"),
        (5, "'post' of endpoint 'GET /b' is empty (null)"),
        (6, "list items must be adapter names (strings), got null"),
        (9, "adapter 'b' has no URL"),
        (10, "'url' of adapter 'c' is empty (null)"),
        (11, "'timeout' of adapter 'd' is empty (null)"),
        (11, "'on_error' of adapter 'd' is empty (null)"),
    ])


def test_unknown_keys_at_every_level():
    text = """\
        version: 1
        endpoint:
          "GET /x": {pre: [a]}
        endpoints:
          "GET /x":
            pre: [a]
            postt: [a]
        adapters:
          a:
            url: http://a/
            retries: 3
        """
    assert_errors(text, [
        (2, "unknown key 'endpoint' at the top level (expected version, endpoints, adapters, "
            "max_body, clients); did you mean 'endpoints'?"),
        (7, "unknown key 'postt' in endpoint 'GET /x' (expected pre, post); did you mean 'post'?"),
        (11, "unknown key 'retries' in adapter 'a' "
             "(expected url, timeout, on_error, protocol, credentials, plugin, name, socket)"),
    ])


def test_sections_of_the_wrong_type():
    assert_errors("endpoints: [a]\nadapters: http://a/\n", [
        (1, "'endpoints' must be a mapping"), (2, "'adapters' must be a mapping"),
    ])
    assert_errors(with_adapters('"GET /x": [a]\n"GET /y": a\n'), [
        (2, "endpoint 'GET /x' must be a mapping with 'pre' and/or 'post', got a list"),
        (3, "endpoint 'GET /y' must be a mapping with 'pre' and/or 'post', got the string 'a'"),
    ])


def test_scalar_where_a_list_belongs():
    text = """\
        "GET /x":
          pre: a
          post:
            a
        "GET /y": {pre: {a: 1}, post: 3}
        """
    assert_errors(with_adapters(text), [
        (3, "'pre' of endpoint 'GET /x' must be a list of adapter names, got the string 'a'; "
            "write [a]"),
        (5, "'post' of endpoint 'GET /x' must be a list of adapter names, got the string 'a'"),
        (6, "'pre' of endpoint 'GET /y' must be a list of adapter names, got a mapping"),
        (6, "'post' of endpoint 'GET /y' must be a list of adapter names, got the number 3"),
    ])


def test_list_items_that_are_not_strings():
    text = """\
        "GET /x":
          pre:
            - a
            - 42
            - [a]
            - {a: 1}
            - no
            - 2015-01-01
        """
    assert_errors(with_adapters(text), [
        (5, "got the number 42"),
        (6, "got a list"),
        (7, "got a mapping"),
        (8, "got the boolean no"),
        (9, "got the date 2015-01-01"),
    ])


def test_undefined_adapters_at_each_use():
    text = """\
        "POST /*/containers/create":
          pre: [flocker, weeve]
          post:
            - weeve
            - ghost
        """
    assert_errors(with_adapters(text, "flocker: http://f/\nweave: http://w/\n"), [
        (3, "adapter 'weeve' (in 'pre' of endpoint 'POST /*/containers/create') is not defined "
            "under 'adapters'; did you mean 'weave'?"),
        (5, "adapter 'weeve' (in 'post'"),
        (6, "adapter 'ghost' (in 'post'"),
    ])


def test_a_name_defined_with_a_fault_is_not_also_reported_as_undefined():
    text = with_adapters('"GET /x": {pre: [a]}\n', "a: ftp://a/\n")
    assert_errors(text, [(4, "unsupported scheme")])


def test_duplicate_keys_at_every_level_name_both_lines():
    text = """\
        endpoints:
          "POST /*/containers/create":
            pre: [flocker]
            post: [weave]
            pre: [weave]
          "POST /*/containers/create": {}
        adapters:
          flocker: http://flocker/
          weave: {url: "http://w/", timeout: 1, timeout: 2}
          flocker: http://flocker2/
        endpoints: {}
        """
    dup = "YAML would silently keep only the last one"
    assert_errors(text, [
        (5, f"duplicate key 'pre': it is also on line 3; {dup}"),
        (6, "duplicate key 'POST /*/containers/create': it is also on line 2"),
        (9, "duplicate key 'timeout': it is also on line 9"),
        (10, "duplicate key 'flocker': it is also on line 8"),
        (11, "duplicate key 'endpoints': it is also on line 1"),
    ])


def test_quoting_does_not_hide_a_duplicate():
    text = with_adapters("{}\n", "a: http://a/\n'a': http://b/\n\"a\": http://c/\n")
    assert_errors(text, [(5, "also on line 4"), (6, "also on line 4")])


def test_all_faults_are_collected_and_sorted_by_line():
    text = """\
        version: 2
        endpoints:
          "post /x": {pre: a}
          "GET /y": {pre: [nope], extra: 1}
        adapters:
          a: ftp://a/
          b: {url: "http://b/", timeout: 0}
        max_body: 0
        bogus: 1
        """
    errors = errors_of(text)
    lines = [int(message.split(":")[1]) for message in errors]
    assert lines == [1, 3, 3, 4, 4, 6, 7, 8, 9]
    assert str(ConfigError(errors)) == "\n".join(errors)


# --- merge keys and anchors ------------------------------------------------------------------


def test_anchors_and_merge_keys():
    text = """\
        endpoints:
          "POST /x": &hooks
            pre: [a]
          "POST /y":
            <<: *hooks
            post: [b]
          "POST /z": {<<: [*hooks, {post: [b], pre: []}], pre: [b]}
        adapters:
          a: &base {url: "http://a/", timeout: 3, on_error: skip}
          b: {<<: *base, url: "unix:///run/b.sock"}
        """
    config = parse_config(textwrap.dedent(text))
    assert [(e.key, e.pre, e.post) for e in config.endpoints] == [
        ("POST /x", ("a",), ()), ("POST /y", ("a",), ("b",)), ("POST /z", ("b",), ("b",)),
    ]
    assert config.adapters["b"].timeout == 3.0
    assert config.adapters["b"].on_error == "skip"
    assert config.adapters["b"].target.socket_path == "/run/b.sock"


def test_bad_merges():
    text = """\
        "GET /x": {<<: [1], pre: []}
        "GET /y": &self {<<: *self}
        """
    assert_errors(with_adapters(text), [
        (2, "'<<' merges mappings only, got the number 1"), (3, "merges a mapping into itself"),
    ])


# --- YAML syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "phrase"),
    [
        ("endpoints: {}\nadapters: [\n", 2, "while parsing a flow"),
        ("endpoints: {}\nadapters:\n  a: http://a/\n b: http://b/\n", 4, "expected <block end>"),
        ("endpoints: {}\n\tadapters: {}\n", 2, "found character '\\t'"),
        ("endpoints: {}\nadapters: {a: 'x\n", 2, "quoted scalar"),
        ("endpoints: {}\nadapters: {}\n---\nendpoints: {}\n", 3, "single document"),
        ("endpoints: *nowhere\nadapters: {}\n", 1, "undefined alias"),
        ("endpoints: {}\nadapters: {}\nx: a: b\n", 3, "mapping values are not allowed"),
        ("endpoints: {}\n\nadapters: {}\x07\n", 3, "unacceptable character #x0007"),
    ],
)
def test_yaml_syntax_errors_name_the_line(text, line, phrase):
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith(f"f.yml:{line}: YAML syntax error: ")
    assert phrase in errors[0]


# --- load_config and ConfigError ---------------------------------------------------------------


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "adapters.yml"
    path.write_text(ORIGINAL)
    config = load_config(path)
    assert config.source == str(path)
    assert config.endpoints == parse_config(ORIGINAL).endpoints
    path.write_text(ORIGINAL.replace("post: [weave]\n  \"POST /*/containers/*/start\"", "post: 3\n"
                                     "  \"POST /*/containers/*/start\""))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.errors[0].startswith(f"{path}:5: ")


def test_load_config_unreadable(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.errors == [f"{missing}: cannot read: No such file or directory"]
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.errors[0].startswith(f"{tmp_path}: cannot read: ")
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"endpoints: {}\n\xff\xfe")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert caught.value.errors == [f"{binary}: cannot read: not UTF-8 text (bad byte at offset 14)"]


def test_config_error_keeps_its_list_through_pickle_and_copy():
    error = ConfigError(["f.yml:1: a", "f.yml:2: b"])
    assert str(error) == "f.yml:1: a\nf.yml:2: b"
    for clone in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
        assert clone.errors == error.errors
        assert str(clone) == str(error)


# --- properties --------------------------------------------------------------------------------

adapter_names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)
hosts = st.sampled_from(["flocker", "weave", "10.0.0.5", "hooks.example.com", "[::1]"])
http_paths = st.from_regex(r"(/[a-z0-9._-]{1,8}){0,3}(\?[a-z]=[0-9])?", fullmatch=True)
urls = st.one_of(
    st.builds("{}://{}{}{}".format, st.sampled_from(["http", "https"]), hosts,
              st.sampled_from(["", ":80", ":8080"]), http_paths),
    st.builds("unix:///run/{}.sock{}".format, adapter_names,
              http_paths.map(lambda path: f":{path}" if path.startswith("/") else "")),
    st.builds("http+unix://%2Frun%2F{}.sock{}".format, adapter_names, http_paths),
)
adapter_specs = urls | st.fixed_dictionaries(
    {"url": urls},
    optional={
        "timeout": st.integers(1, 600) | st.floats(0.1, 600),
        "on_error": st.sampled_from(["fail", "skip"]),
    },
)
endpoint_keys = st.builds(
    "{} {}".format,
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "*"]),
    st.just("*") | st.from_regex(r"/[a-z0-9*?/._-]{0,20}", fullmatch=True),
)
sizes = st.integers(1, 2**40) | st.builds(
    "{}{}".format, st.integers(1, 1024), st.sampled_from(["", "B", "KiB", "MiB", "KB", "MB"])
)


@st.composite
def config_data(draw: st.DrawFn) -> dict:
    """A valid configuration as Python data, in the order a file would hold it."""
    names = draw(st.lists(adapter_names, max_size=5, unique=True))
    adapters = {name: draw(adapter_specs) for name in names}
    endpoints: dict[str, dict[str, list[str]]] = {}
    for key in draw(st.lists(endpoint_keys, max_size=6, unique=True)):
        spec: dict[str, list[str]] = {}
        for field in ("pre", "post"):
            if draw(st.booleans()):
                spec[field] = draw(st.lists(st.sampled_from(names), max_size=4)) if names else []
        endpoints[key] = spec
    sections: list[tuple[str, object]] = [("endpoints", endpoints), ("adapters", adapters)]
    if draw(st.booleans()):
        sections.append(("version", 1))
    if draw(st.booleans()):
        sections.append(("max_body", draw(sizes)))
    return dict(draw(st.permutations(sections)))


class _NoAliases(yaml.SafeDumper):
    # A value shared between two places would be written once with an anchor; a file written by
    # hand repeats it, and so must the generated ones.
    def ignore_aliases(self, data: object) -> bool:
        return True


def dump(data: dict, flow_style: bool | None = False) -> str:
    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False, default_flow_style=flow_style,
                     width=10**6)


@given(config_data(), st.sampled_from([False, True, None]))
def test_round_trip_keeps_endpoint_order_and_hook_lists(data, flow_style):
    config = parse_config(dump(data, flow_style))
    assert [e.key for e in config.endpoints] == list(data["endpoints"])
    for endpoint, spec in zip(config.endpoints, data["endpoints"].values(), strict=True):
        assert endpoint.pre == tuple(spec.get("pre", ()))
        assert endpoint.post == tuple(spec.get("post", ()))
        assert f"{endpoint.method} {endpoint.pattern}" == endpoint.key
    assert list(config.adapters) == list(data["adapters"])
    for name, spec in data["adapters"].items():
        adapter = config.adapters[name]
        spec = spec if isinstance(spec, dict) else {"url": spec}
        assert adapter.name == name
        assert adapter.url == spec["url"]
        assert adapter.timeout == float(spec.get("timeout", DEFAULT_TIMEOUT))
        assert adapter.on_error == spec.get("on_error", "fail")
        assert adapter.target.http_path.startswith("/")
        assert (adapter.target.socket_path is None) == (adapter.target.kind != "unix")
    if "max_body" not in data:
        assert config.max_body == DEFAULT_MAX_BODY


def _keys(node: MappingNode, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every mapping key of a composed file, with the path of keys that leads to it."""
    out = []
    for key, value in node.value:
        out.append(((*path, key.value), key))
        if isinstance(value, MappingNode):
            out.extend(_keys(value, (*path, key.value)))
    return out


@settings(max_examples=200)
@given(config_data(), st.data())
def test_any_duplicated_key_is_reported_with_both_lines(data, pick):
    text = dump(data)
    keys = _keys(yaml.compose(text))
    path, key = pick.draw(st.sampled_from(keys))
    value = data
    for step in path:
        value = value[step]
    lines = text.splitlines(keepends=True)
    row, column = key.start_mark.line, key.start_mark.column
    written = lines[row][column:key.end_mark.column]
    # The copy goes just before the original, in the same mapping: it becomes the first of the
    # two, and the original (pushed down a line) the duplicate.
    lines.insert(row, f"{' ' * column}{written}: {json.dumps(value)}\n")
    errors = errors_of("".join(lines))
    assert errors == [
        f"f.yml:{row + 2}: duplicate key {path[-1]!r}: it is also on line {row + 1}; "
        "YAML would silently keep only the last one"
    ]


def _check_messages(text: str) -> None:
    try:
        parse_config(text, "f.yml")
    except ConfigError as exc:
        assert exc.errors
        last = max(1, len(text.splitlines()))
        for message in exc.errors:
            match = re.match(r"f\.yml:(\d+): \S", message)
            assert match, message
            assert 1 <= int(match.group(1)) <= last, (message, text)


@given(st.text(alphabet=" abp:-[]{}\n\"'#&*!|>?,%@~0123\t/", max_size=120) | st.text(max_size=60))
def test_any_text_is_a_config_or_errors_with_lines_in_the_file(text):
    _check_messages(text)


@given(config_data(), st.data())
def test_damaged_files_give_errors_with_lines_in_the_file(data, pick):
    lines = dump(data, pick.draw(st.sampled_from([False, None]))).splitlines(keepends=True)
    row = pick.draw(st.integers(0, len(lines) - 1))
    damage = pick.draw(st.sampled_from(["drop", "repeat", "indent", "dedent", "null"]))
    if damage == "drop":
        del lines[row]
    elif damage == "repeat":
        lines.insert(row, lines[row])
    elif damage == "indent":
        lines[row] = "   " + lines[row]
    elif damage == "dedent":
        lines[row] = lines[row].lstrip(" ")
    else:
        lines[row] = lines[row].split(":")[0] + ":\n"
    _check_messages("".join(lines))


# The 'clients' allowlist


def test_a_clients_section_reads_into_rules_with_their_lines():
    config = parse_config(textwrap.dedent("""\
        endpoints: {}
        adapters: {}
        clients:
          allow:
            - {user: ci}
            - {group: docker-ops}
            - uid: 0
            - {common_name: alice, san: alice.example}
        """), "f.yml")
    assert config.clients is not None
    assert config.clients.line == 3
    assert config.clients.allow == (
        ClientRule(user="ci", line=5),
        ClientRule(group="docker-ops", line=6),
        ClientRule(uid=0, line=7),
        ClientRule(common_name="alice", san="alice.example", line=8),
    )


def test_without_a_clients_section_there_is_no_allowlist():
    assert parse_config(ORIGINAL, "f.yml").clients is None
    assert EMPTY.clients is None


def test_an_empty_allow_list_lets_nobody_in():
    config = parse_config("endpoints: {}\nadapters: {}\nclients: {allow: []}\n", "f.yml")
    assert config.clients is not None and config.clients.allow == ()


def test_faults_in_the_clients_section_are_reported_at_their_lines():
    text = textwrap.dedent("""\
        endpoints: {}
        adapters: {}
        clients:
          allow:
            - 3
            - {uid: -1}
            - {user: 4}
            - {usr: x}
            - {}
            - {gid: "10"}
            - {common_name: ""}
            - {group: }
          deny: []
        """)
    assert_errors(text, [
        (5, "each entry of 'allow' in 'clients' must be a mapping naming one or more of user, "
            "group, uid, gid, common_name, san, got the number 3"),
        (6, "'uid' in 'clients' must be a number 0 or more, got the number -1"),
        (7, "'user' in 'clients' must be a name (a string), got the number 4"),
        (8, "unknown key 'usr' in an entry of 'allow' in 'clients' (expected user, group, uid, "
            "gid, common_name, san); did you mean 'user'?"),
        (9, "an entry of 'allow' in 'clients' names nothing"),
        (10, "'gid' in 'clients' must be a number 0 or more, got the string '10'"),
        (11, "'common_name' in 'clients' must be a name (a string)"),
        (12, "'group' in 'clients' must be a name (a string), got null"),
        (13, "unknown key 'deny' in 'clients' (expected allow)"),
    ])


@pytest.mark.parametrize(("section", "phrase"), [
    ("clients:\n", "'clients' is empty (null)"),
    ("clients: [ci]\n", "'clients' must be a mapping with 'allow'"),
    ("clients: {}\n", "'clients' has no 'allow' list"),
    ("clients: {allow: ci}\n", "'allow' of 'clients' must be a list of entries"),
    ("clients: {allow: }\n", "'allow' of 'clients' must be a list of entries"),
])
def test_a_malformed_clients_section_is_an_error_at_its_line(section, phrase):
    assert_errors("endpoints: {}\nadapters: {}\n" + section, [(3, phrase)])
