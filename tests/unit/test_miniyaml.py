"""The kubeconfig YAML reader: what kubectl writes comes back as data; anything else is refused by line."""

import pytest

from imgrep.kube.miniyaml import YamlError, loads

# what `kubectl config set-cluster/set-credentials/set-context/use-context` wrote (kubectl 1.3x)
KUBECTL_WRITTEN = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: TFMwdA==
    server: https://127.0.0.1:6443
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    namespace: team-a
    user: kind-kind
  name: kind-kind
current-context: kind-kind
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    token: abc.def
- name: with-cert
  user:
    client-certificate: /tmp/x.crt
    client-key: /tmp/x.key
"""


def test_what_kubectl_writes_reads_back_as_the_same_structure():
    assert loads(KUBECTL_WRITTEN) == {
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": "TFMwdA==", "server": "https://127.0.0.1:6443"},
                      "name": "kind-kind"}],
        "contexts": [{"context": {"cluster": "kind-kind", "namespace": "team-a", "user": "kind-kind"},
                      "name": "kind-kind"}],
        "current-context": "kind-kind",
        "kind": "Config",
        "preferences": {},
        "users": [{"name": "kind-kind", "user": {"token": "abc.def"}},
                  {"name": "with-cert", "user": {"client-certificate": "/tmp/x.crt", "client-key": "/tmp/x.key"}}],
    }


def test_scalars_quotes_comments_and_indented_sequences():
    text = """\
# a comment
a: "quoted: # not a comment"   # a comment
b: 'it''s'
c: "tab\\tand \\u00e9"
d: true
e: null
f: 42
g: ~
h: [x, "y", 3]
i:
  - one
  - two: 2
    three: 3
j: text with # inside? no, after a space it is a comment
"""
    assert loads(text) == {
        "a": "quoted: # not a comment", "b": "it's", "c": "tab\tand é", "d": True, "e": None, "f": 42, "g": None,
        "h": ["x", "y", 3], "i": ["one", {"two": 2, "three": 3}], "j": "text with",
    }


def test_json_is_read_as_json():
    assert loads('{"clusters": [], "current-context": "x"}') == {"clusters": [], "current-context": "x"}


def test_an_empty_document_is_null():
    assert loads("# nothing\n---\n") is None


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("a: &anchor x\n", 1, "not supported"),
        ("a: *alias\n", 1, "not supported"),
        ("a: |\n  block\n", 1, "not supported"),
        ("a: !!str x\n", 1, "not supported"),
        ("a: 1\na: 2\n", 2, "appears twice"),
        ("a:\n  b: 1\n    c: 2\n", 3, "indentation"),
        ("a: 1\n\tb: 2\n", 2, "tab"),
        ('a: "open\n', 1, "not closed"),
        ("a: 1\n---\nb: 2\n", 2, "more than one document"),
        ("just text\n", 1, "key: value"),
    ],
)
def test_what_it_does_not_read_is_refused_naming_the_line(text, line, words):
    with pytest.raises(YamlError, match=words) as refused:
        loads(text)
    assert refused.value.line == line
