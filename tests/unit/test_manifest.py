"""Manifest parsing: what a copy must move, for every media type a registry may answer with."""

import json

import pytest

from imgrep.errors import RegistryProtocolError, UnsupportedManifest
from imgrep.oci.manifest import announced_type, parse_manifest
from imgrep.oci.protocol import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST

A, B, C = ("sha256:" + c * 64 for c in "abc")


def image(media_type, layers, config=A):
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "config": {"mediaType": "application/json", "digest": config, "size": 10},
                       "layers": layers}).encode()


def layer(digest, media_type="application/vnd.oci.image.layer.v1.tar+gzip", size=100):
    return {"mediaType": media_type, "digest": digest, "size": size}


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_image_manifest_lists_config_then_layers(media_type):
    parsed = parse_manifest(image(media_type, [layer(B), layer(C)]), media_type, "r")
    assert [d.digest for d in parsed.blobs] == [A, B, C] and not parsed.is_index


def test_repeated_layer_is_moved_once():
    parsed = parse_manifest(image(OCI_MANIFEST, [layer(B), layer(B)]), OCI_MANIFEST, "r")
    assert [d.digest for d in parsed.blobs] == [A, B]


def test_foreign_layers_are_left_out():
    foreign = layer(C, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    parsed = parse_manifest(image(DOCKER_MANIFEST, [layer(B), foreign]), DOCKER_MANIFEST, "r")
    assert [d.digest for d in parsed.blobs] == [A, B]


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
def test_index_lists_children_with_platforms(media_type):
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": B, "size": 5, "platform": {"os": "linux", "architecture": "arm64",
                                                                           "variant": "v8"}},
        {"mediaType": OCI_MANIFEST, "digest": C, "size": 5}]}).encode()
    parsed = parse_manifest(body, media_type, "r")
    assert parsed.is_index
    assert [(d.digest, d.platform) for d in parsed.manifests] == [(B, "linux/arm64/v8"), (C, "")]


def test_document_media_type_wins_over_a_generic_content_type():
    parsed = parse_manifest(image(OCI_MANIFEST, [layer(B)]), "application/octet-stream", "r")
    assert parsed.media_type == OCI_MANIFEST


@pytest.mark.parametrize("body, media_type", [
    (b'{"schemaVersion": 1, "fsLayers": []}', "application/json"),
    (b'{"schemaVersion": 2}', "application/vnd.docker.distribution.manifest.v1+prettyjws"),
])
def test_schema1_is_refused_with_a_clear_reason(body, media_type):
    with pytest.raises(UnsupportedManifest, match="schema 1"):
        parse_manifest(body, media_type, "r")


@pytest.mark.parametrize("body", [
    b"not json", b"[]",
    json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": "sha256:short", "size": 1}, "layers": []}).encode(),
    json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": A, "size": -1}, "layers": []}).encode(),
    json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": A, "size": 1}, "layers": {}}).encode(),
    json.dumps({"mediaType": OCI_INDEX, "manifests": "x"}).encode(),
])
def test_malformed_manifests_are_protocol_errors(body):
    with pytest.raises(RegistryProtocolError):
        parse_manifest(body, OCI_MANIFEST, "r")


def test_unknown_media_type_is_unsupported():
    with pytest.raises(UnsupportedManifest, match="unsupported manifest media type"):
        parse_manifest(b'{"schemaVersion": 2, "mediaType": "application/x-thing"}', "application/x-thing", "r")


@pytest.mark.parametrize(("content_type", "media_type"), [
    (OCI_MANIFEST, OCI_MANIFEST),
    (DOCKER_MANIFEST_LIST + "; charset=utf-8", DOCKER_MANIFEST_LIST),
    ("text/html; charset=utf-8", None),
    ("application/octet-stream", None),
    ("application/json", None),
    ("", None),
])
def test_a_content_type_names_a_manifest_type_or_none(content_type, media_type):
    assert announced_type(content_type, "r") == media_type


def test_a_schema1_content_type_is_refused_from_the_headers_alone():
    with pytest.raises(UnsupportedManifest, match="schema 1"):
        announced_type("application/vnd.docker.distribution.manifest.v1+prettyjws", "r")


@pytest.mark.parametrize("body", [b"<!doctype html><html></html>", b"\xff\xfe", b"[]", b"{}", b'{"errors": []}'])
def test_what_is_not_a_manifest_is_refused(body):
    with pytest.raises((RegistryProtocolError, UnsupportedManifest)):
        parse_manifest(body, "text/html", "r")


def test_an_oci_manifest_without_media_type_is_known_by_its_shape():
    body = json.dumps({"schemaVersion": 2, "config": {"mediaType": "x", "digest": A, "size": 1},
                       "layers": []}).encode()
    assert parse_manifest(body, "application/octet-stream", "r").media_type == OCI_MANIFEST


@pytest.mark.parametrize("algorithm_digest", ["sha384:" + "c" * 96, "sha512:" + "d" * 128])
def test_descriptors_may_name_blobs_by_sha384_or_sha512(algorithm_digest):
    parsed = parse_manifest(image(OCI_MANIFEST, [layer(algorithm_digest)]), OCI_MANIFEST, "r")
    assert parsed.blobs[-1].digest == algorithm_digest
