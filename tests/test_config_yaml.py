"""config.yml is read exactly as yaml.safe_load reads it, without importing PyYAML for the plain form."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.settings import ROOT_CONFIG, _read_plain_yaml, read_config_file
from tests.conftest import ROOT


def _safe_load(text: str) -> object:
    loaded = yaml.safe_load(text)
    return {} if loaded is None else loaded


def test_the_shipped_config_is_read_without_pyyaml_and_as_safe_load_reads_it() -> None:
    assert _read_plain_yaml(ROOT_CONFIG.read_text()) == _safe_load(ROOT_CONFIG.read_text())
    code = (
        "import sys; from pipelinejobs.settings import ROOT_CONFIG, load_settings; "
        "s = load_settings({}, ROOT_CONFIG); print('yaml' in sys.modules, s.limit('max_data_bytes', 1))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "262144"]


#: Scalars YAML 1.1 reads as something other than text, and texts that look like them.
TRICKY_VALUES = [
    *("yes", "no", "on", "off", "Yes", "OFF", "y", "n", "true", "True", "TRUE", "tRUE", "false", "FALSE"),
    *("~", "null", "Null", "NULL", "nULL", "0", "00", "010", "0o10", "0x1F", "0b11", "1_000", "1.5", "1e3"),
    *("1.", ".5", "127.0.0.1", "1.2", "1.2.3", "1:30", "190:20:30", "2024-01-01", ".inf", "-.inf", ".NaN"),
    *("-1", "+1", "a,b", "a b", "/data/x.sqlite3", "~/x", "<<", "=", "a:b", "a: b", "[a]", "{a: 1}", "&a x"),
    *("*a", "!!str 1", "'q # x'", '"dq"', "'it''s'", '"a\\tb"', "''", '""', "'", '"', "a #b", "a#b", "|", ">"),
    *("-", "- x", "%x", "@x", "`x", "caf\u00e9", "x\ty", "0.0.0.0", "08", "9", "12345678901234567890"),
]
PRINTABLE_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
#: Values of the plain form (and a few just outside it).
PLAIN_VALUES = st.sampled_from(["~", "null", "true", "False", "0", "8000", "127.0.0.1", "INFO", "/d/x.db", "a,b"]) | (
    st.from_regex(
        r"[A-Za-z/][A-Za-z0-9/._,-]{0,8}|'[ -&(-~]{0,6}'|\"[ !#-\[\]-~]{0,6}\"|[1-9][0-9]{0,12}", fullmatch=True
    )
)
MOSTLY_PLAIN = st.one_of(*[PLAIN_VALUES] * 8, st.sampled_from(TRICKY_VALUES))
KEYS = ["mongodb", "host", "port", "a_b", "_x", "true", "yes", "null", "on", "y", "n", "1", "a-b", "A", "<<", "k k"]


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["section", "entry", "child", "child", "comment", "blank", "odd"]))
        key = draw(st.sampled_from(KEYS) | st.from_regex(r"[a-z_]{1,6}", fullmatch=True))
        value = draw(
            st.sampled_from(TRICKY_VALUES) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
        )
        comment = draw(st.sampled_from(["", "  # note", " #x", "#x", "   "]))
        if kind == "section":
            lines.append(f"{key}:{comment}")
        elif kind == "entry":
            lines.append(f"{key}: {value}{comment}")
        elif kind == "child":
            lines.append(f"{draw(st.sampled_from(['  ', '    ', ' ', chr(9)]))}{key}: {value}{comment}")
        elif kind == "comment":
            lines.append(draw(st.sampled_from(["# a comment", "  # indented", "#"])))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", "  ", "\r"])))
        else:
            lines.append(draw(st.sampled_from(["---", "- item", "key: [1, 2]", "  - x", "...", "key:value"])))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@st.composite
def plain_like_texts(draw: st.DrawFn) -> str:
    """Sections of two-space-indented entries and flat entries, keys unique: mostly the plain form."""
    lines = []
    names = st.one_of(*[st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True)] * 8, st.sampled_from(KEYS))
    keys = draw(st.lists(names, unique=True, max_size=6))
    for key in keys:
        comment = draw(st.sampled_from(["", "  # note", "   "]))
        if draw(st.booleans()):
            lines.append(f"{key}:{comment}")
            children = draw(st.lists(st.from_regex(r"[a-z_]{1,6}", fullmatch=True), unique=True, max_size=4))
            for child in children:
                value = draw(MOSTLY_PLAIN)
                lines.append(f"  {child}: {value}{draw(st.sampled_from(['', ' # c']))}")
        else:
            lines.append(f"{key}: {draw(MOSTLY_PLAIN)}{comment}")
            if draw(st.integers(0, 5)) == 0:  # entries under a scalar: not YAML
                lines.append(f"  child: {draw(MOSTLY_PLAIN)}")
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from(["# comment", "", "  # indented comment"])))
    return "\n".join(lines) + "\n"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(config_texts(), plain_like_texts(), plain_like_texts()))
def test_the_plain_reader_gives_what_safe_load_gives_or_declines(text: str) -> None:
    plain = _read_plain_yaml(text)
    if plain is None:
        return
    assert plain == _safe_load(text)
    # same types too (True == 1 and 1 == 1.0 in Python)
    assert repr(plain) == repr(_safe_load(text))


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_each_tricky_value_reads_as_safe_load_reads_it(tmp_path: Path, value: str) -> None:
    text = f"section:\n  key: {value}\nflat: {value}\n"
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    try:
        expected = _safe_load(text)
    except yaml.YAMLError:
        with pytest.raises(PipelineJobsError) as err:
            read_config_file(path)
        assert err.value.kind is ErrorKind.CONFIGURATION
        return
    assert repr(read_config_file(path)) == repr(expected)


def test_the_plain_reader_takes_the_usual_values() -> None:
    text = "a:\n  s: word\n  n: 8000\n  z: 0\n  t: true\n  f: False\n  q: 'x # y'\n  d: \"two words\"\n  h: 127.0.0.1\n"
    assert _read_plain_yaml(text + "b: ~  # none\nc:\n") == {
        "a": {"s": "word", "n": 8000, "z": 0, "t": True, "f": False, "q": "x # y", "d": "two words", "h": "127.0.0.1"},
        "b": None,
        "c": None,
    }


def test_what_is_not_yaml_or_not_a_mapping_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    for text in ("a: [1, 2\n", "- just\n- a list\n", "key: 'unterminated\n"):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(PipelineJobsError) as err:
            read_config_file(path)
        assert err.value.kind is ErrorKind.CONFIGURATION
    path.write_text("# only comments\n", encoding="utf-8")
    assert read_config_file(path) == {}
