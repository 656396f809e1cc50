"""Bad input files for the dataset loaders: knowledge-graph triples (``knowledge.from_tsv``) and
LINQS ``.content``/``.cites`` pairs (``graphs.load_linqs``). Errors name the file and the line."""
import re
import warnings

import numpy as np
import pytest

from workbench.datasets import graphs, knowledge
from workbench.errors import RelationError

# ---- knowledge graphs ----------------------------------------------------------------------------

CLEAN = "a\tlikes\tb\nb\tlikes\tc\nc\thates\ta\n"
ENTITIES, RELATIONS = ("a", "b", "c"), ("hates", "likes")
TRIPLES = [[0, 1, 1], [1, 1, 2], [2, 0, 0]]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, newline="")
    return path


def assert_clean(T):
    assert T.entities == ENTITIES and T.relations == RELATIONS
    np.testing.assert_array_equal(T.train, TRIPLES)


def at(name, line):
    """A pattern for an error message naming file ``name`` and ``line``."""
    return rf"{re.escape(name)}'?, line {line}\b"


def test_clean_file_loads_the_expected_triples(tmp_path):
    assert_clean(knowledge.from_tsv(write(tmp_path, "train.tsv", CLEAN)))


def test_whitespace_around_names_is_stripped(tmp_path):
    padded = "a \t likes\tb\n b\tlikes \t c \n c\t hates\ta  \n"
    padded += "a\tlikes\tb   \n"  # the first triple again, once stripped
    T = knowledge.from_tsv(write(tmp_path, "train.tsv", padded))
    assert_clean(T)
    assert "b " not in T.entities and " likes" not in T.relations


def test_crlf_line_ends_and_a_byte_order_mark_are_ignored(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + CLEAN.replace("\n", "\r\n").encode())
    assert_clean(knowledge.from_tsv(path))


def test_blank_lines_are_skipped_and_still_counted(tmp_path):
    path = write(tmp_path, "train.tsv", "\n" + CLEAN.replace("\n", "\n  \n", 1) + "\n\n")
    assert_clean(knowledge.from_tsv(path))
    write(tmp_path, "bad.tsv", "\n\na\tlikes\tb\n\nb\tlikes\n")
    with pytest.raises(RelationError, match=at("bad.tsv", 5)):
        knowledge.from_tsv(tmp_path / "bad.tsv")


@pytest.mark.parametrize("header", ["head\trelation\ttail", "Head\tRelation\tTail",
                                    "# subject\tpredicate\tobject", "source\trel\ttarget"])
def test_a_header_on_the_first_line_is_skipped(tmp_path, header):
    T = knowledge.from_tsv(write(tmp_path, "train.tsv", f"\n{header}\n{CLEAN}"))
    assert_clean(T)
    assert len(T.train) == 3


def test_a_header_further_down_is_refused(tmp_path):
    path = write(tmp_path, "train.tsv", CLEAN + "head\trelation\ttail\n" + CLEAN)
    with pytest.raises(RelationError, match=at("train.tsv", 4) + ".*header.*first line"):
        knowledge.from_tsv(path)


def test_a_header_in_the_test_split_is_skipped_too(tmp_path):
    train = write(tmp_path, "train.tsv", CLEAN)
    test = write(tmp_path, "test.tsv", "head\trelation\ttail\nc\tlikes\ta\n")
    T = knowledge.from_tsv(train, test=test)
    assert T.entities == ENTITIES
    np.testing.assert_array_equal(T.test, [[2, 1, 0]])


@pytest.mark.parametrize("line, got, hint", [
    ("a\tlikes", 2, ""),
    ("a\tlikes\tb\tc", 4, ""),
    ("a\tlikes\tb\t", 4, "trailing tab"),
    ("a likes b", 1, "tabs, not spaces"),
])
def test_lines_with_the_wrong_number_of_fields_are_refused(tmp_path, line, got, hint):
    path = write(tmp_path, "valid.tsv", CLEAN + line + "\n")
    with pytest.raises(RelationError, match=at("valid.tsv", 4)) as err:
        knowledge.from_tsv(write(tmp_path, "train.tsv", CLEAN), valid=path)
    message = str(err.value)
    assert "expected 3 tab-separated fields (head, relation, tail)" in message
    assert f"got {got}" in message and hint in message


def test_the_first_bad_line_is_named_and_the_others_counted(tmp_path):
    path = write(tmp_path, "train.tsv", "a\tlikes\tb\nx\ty\nc\nd\te\tf\n")
    with pytest.raises(RelationError, match=at("train.tsv", 2) + r".*\(2 bad line\(s\)"):
        knowledge.from_tsv(path)


@pytest.mark.parametrize("line, field", [(" \tlikes\tb", "head"), ("a\t  \tb", "relation"),
                                         ("a\tlikes\t ", "tail")])
def test_names_empty_after_stripping_are_refused(tmp_path, line, field):
    path = write(tmp_path, "train.tsv", CLEAN + "\n" + line + "\n")
    with pytest.raises(RelationError, match=at("train.tsv", 5) + f".*the {field} name is empty"):
        knowledge.from_tsv(path)


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"a\tlikes\tb\nb\tlikes\tc\xff\n")
    with pytest.raises(RelationError, match=at("train.tsv", 2) + ".*UTF-8"):
        knowledge.from_tsv(path)


def test_the_loader_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match=at("train.tsv", 1)):
        knowledge.from_tsv(write(tmp_path, "train.tsv", "a\tb\n"))


# ---- LINQS .content / .cites ---------------------------------------------------------------------

CONTENT = "p1\t1\t0\t0\tTheory\np2\t0\t1\t0\tAgents\np3\t0\t0\t1\tTheory\n"
CITES = "p1\tp2\np3\tp1\n"


def linqs(tmp_path, content=CONTENT, cites=CITES, name="tiny"):
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.content").write_text(content, newline="")
    (directory / f"{name}.cites").write_text(cites, newline="")
    return directory


def load(directory):
    return graphs.load_linqs(directory, train_per_class=1, n_val=0, n_test=None)


def edges(g):
    return set(zip(g.src.tolist(), g.dst.tolist()))


def test_a_well_formed_pair_loads_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = load(linqs(tmp_path))
    assert g.n_nodes == 3 and g.class_names == ("Agents", "Theory")
    np.testing.assert_array_equal(g.features, np.eye(3))
    np.testing.assert_array_equal(g.labels, [1, 0, 1])
    assert edges(g) == {(0, 1), (1, 0), (0, 2), (2, 0)}
    assert "0 citation(s)" in g.source


def test_whitespace_crlf_and_blank_lines_load_the_same_graph(tmp_path):
    content = " p1\t1 \t0\t0\tTheory \r\n\r\np2\t0\t1\t0\tAgents\r\np3 \t0\t0\t1\tTheory\r\n"
    g = load(linqs(tmp_path, content, "p1 \tp2\n\n p3\tp1\n"))
    clean = load(linqs(tmp_path, name="clean"))
    np.testing.assert_array_equal(g.features, clean.features)
    np.testing.assert_array_equal(g.labels, clean.labels)
    assert g.class_names == clean.class_names and edges(g) == edges(clean)


@pytest.mark.parametrize("cites, line, got", [("p1\tp2\np3\n", 2, 1), ("p1\tp2\np3\tp1\tp2\n", 2, 3),
                                              ("p1\tp2\n\n\np3\t\n", 4, None)])
def test_malformed_cites_lines_are_refused(tmp_path, cites, line, got):
    d = linqs(tmp_path, cites=cites)
    expect = "expected 2 tab-separated fields" if got else "a paper id is empty"
    with pytest.raises(RelationError, match=at("tiny.cites", line) + f".*{expect}") as err:
        load(d)
    if got:
        assert f"got {got}" in str(err.value)


@pytest.mark.parametrize("bad, got", [("p2\t0\t1\tAgents", 4), ("p2\t0\t1", 3),
                                      ("p2\t0\t1\t0\t1\tAgents", 6)])
def test_content_lines_with_another_field_count_are_refused(tmp_path, bad, got):
    content = CONTENT.replace("p2\t0\t1\t0\tAgents", bad)
    with pytest.raises(RelationError, match=at("tiny.content", 2) + f": {got} tab-separated field"
                                            r".*most lines have 5 \(paper id, 3 features, label\)"):
        load(linqs(tmp_path, content))


def test_a_truncated_first_content_line_is_the_one_reported(tmp_path):
    content = "p1\t1\tTheory\n" + CONTENT.split("\n", 1)[1]
    with pytest.raises(RelationError, match=at("tiny.content", 1) + ".*truncated"):
        load(linqs(tmp_path, content))


@pytest.mark.parametrize("value", ["x", "nan", "inf", "1e60"])
def test_features_that_are_not_finite_numbers_are_refused(tmp_path, value):
    content = CONTENT.replace("p3\t0\t0\t1", f"p3\t0\t{value}\t1")
    with pytest.raises(RelationError, match=at("tiny.content", 3) +
                       rf".*feature 2 \(field 3\) is '{value}', not a finite float32 number"):
        load(linqs(tmp_path, content))


@pytest.mark.parametrize("content, line, what", [
    (CONTENT.replace("p2\t0\t1\t0\tAgents", " \t0\t1\t0\tAgents"), 2, "the paper id is empty"),
    (CONTENT.replace("p3\t0\t0\t1\tTheory", "p3\t0\t0\t1\t "), 3, "the label is empty"),
    (CONTENT.replace("p3\t", "p1\t"), 3, "paper id 'p1' is already on line 1"),
    ("p1 1 0 0 Theory\n", 1, "tabs, not spaces"),
])
def test_bad_content_fields_are_refused(tmp_path, content, line, what):
    with pytest.raises(RelationError, match=at("tiny.content", line) + f".*{re.escape(what)}"):
        load(linqs(tmp_path, content))


def test_a_blank_file_is_refused(tmp_path):
    with pytest.raises(RelationError, match=r"tiny\.cites' is empty"):
        load(linqs(tmp_path, cites="\n \n"))


def test_citations_of_unknown_papers_are_dropped_with_a_warning(tmp_path):
    cites = CITES + "p1\tp9\np7\tp3\n"
    with pytest.warns(UserWarning, match=r"2 of 4 citation\(s\) in '.*tiny\.cites'.*dropped.*"
                                         r"line 3: cited 'p1', citing 'p9'"):
        g = load(linqs(tmp_path, cites=cites))
    assert edges(g) == {(0, 1), (1, 0), (0, 2), (2, 0)}
    assert "2 citation(s) naming unknown papers dropped" in g.source
